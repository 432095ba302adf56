"""Batches as the orchestrator sees them: a cache of folded event logs.

The cache is only a cache: any entry can be rebuilt by replaying the batch's subject, and
a concurrent append by another replica makes us drop the entry and decide again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from tgdl.bus.eventlog import ConcurrentAppend
from tgdl.contracts.events import BatchEvent
from tgdl.orchestrator import metrics
from tgdl.orchestrator.batch import BatchState, Command, Start, decide, fold, initial_state
from tgdl.orchestrator.ports import BatchLog

MAX_CONFLICT_RETRIES = 8


class BatchRepository:
    def __init__(self, log: BatchLog) -> None:
        self._log = log
        self._cache: dict[str, tuple[BatchState, int]] = {}
        # one lock per batch in use, with how many hold or wait for it: dropped when
        # nobody does, so ids of finished or unknown batches never pile up
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def _exclusive(self, batch_id: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(batch_id, (asyncio.Lock(), 0))
        self._locks[batch_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[batch_id]
            if users == 1:
                del self._locks[batch_id]
            else:
                self._locks[batch_id] = (lock, users - 1)

    def locks_held(self) -> int:
        return len(self._locks)

    async def load(self, batch_id: str) -> tuple[BatchState, int]:
        cached = self._cache.get(batch_id)
        if cached is not None:
            return cached
        events, last_seq = await self._log.load(batch_id)
        state = fold(events) if events else initial_state
        self._remember(batch_id, state, last_seq)
        return state, last_seq

    async def reload(self, batch_id: str) -> tuple[BatchState, int]:
        """The batch as the log says now (refreshing the cache)."""
        self._cache.pop(batch_id, None)
        return await self.load(batch_id)

    async def history(self, batch_id: str) -> tuple[list[BatchEvent], int]:
        """Every event of the batch from the log (not the cache) and its last sequence."""
        return await self._log.load(batch_id)

    def _remember(self, batch_id: str, state: BatchState, last_seq: int) -> None:
        metrics.batch_seen(batch_id, len(state.running), state.max_concurrent,
                           state.exists and not state.closed)
        if state.closed:
            # finished batches leave memory; a later query replays them from the log
            self._cache.pop(batch_id, None)
        elif state.exists:
            self._cache[batch_id] = (state, last_seq)

    def prime(self, batch_id: str, state: BatchState, last_seq: int) -> None:
        self._remember(batch_id, state, last_seq)

    def open_batches(self) -> list[BatchState]:
        return [state for state, _ in self._cache.values()]

    async def execute(
        self, batch_id: str, command: Command | Callable[[BatchState], Command | None]
    ) -> tuple[list[BatchEvent], BatchState, BatchState]:
        """Decide and append; returns (events, state before, state after). A callable
        builds the command from the current state (re-run after a conflict)."""
        async with self._exclusive(batch_id):
            for attempt in range(MAX_CONFLICT_RETRIES):
                if attempt == 0 and isinstance(command, Start) and batch_id not in self._cache:
                    # A fresh id: nothing to read. Should it exist after all, the append
                    # (expecting an empty subject) fails and the next attempt reads it.
                    before, last_seq = initial_state, 0
                else:
                    before, last_seq = await self.load(batch_id)
                cmd = command(before) if callable(command) else command
                events = decide(cmd, before) if cmd is not None else []
                if not events:
                    # Nothing to do, by our cache. Another replica may have appended since
                    # (e.g. granted the file whose outcome this is): check before dropping.
                    if batch_id in self._cache and await self._log.last_seq(batch_id) != last_seq:
                        self._cache.pop(batch_id, None)
                        continue
                    return [], before, before
                try:
                    new_seq = await self._log.append(batch_id, events, last_seq)
                except ConcurrentAppend:
                    metrics.CONFLICTS.inc()
                    self._cache.pop(batch_id, None)  # another replica wrote: reload
                    continue
                metrics.count_appended(events)
                after = fold(events, before)
                self._remember(batch_id, after, new_seq)
                return events, before, after
        raise ConcurrentAppend(batch_id)
