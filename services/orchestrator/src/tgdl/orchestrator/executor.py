"""Carries effects out through the ports, one small case per effect; what to do was
decided by `react.py`. The only state kept here is which dispatches run right now (the
sweep leaves those alone)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Iterable

from tgdl.contracts.config import chat_key
from tgdl.contracts.events import BatchEvent
from tgdl.contracts.jobs import DownloadJob
from tgdl.contracts.status import Priority
from tgdl.orchestrator import metrics
from tgdl.orchestrator.batch import BatchState, Command, MarkDispatched
from tgdl.orchestrator.ports import Ports
from tgdl.orchestrator.react import (
    Decide,
    Dispatch,
    DropQueuedJob,
    Effect,
    EndJob,
    Key,
    LeaveLease,
    Reprioritize,
    Unlist,
    after_dispatch,
    react_all,
)
from tgdl.orchestrator.repository import BatchRepository

NAMES_TTL = 5.0  # s: how long a chat's other names are reused for its jobs


class Executor:
    def __init__(self, repo: BatchRepository, ports: Ports,
                 allowed_chats: frozenset[str] | None = None) -> None:
        self.repo = repo
        self.ports = ports
        self.allowed_chats = allowed_chats  # the allow-list as given (chat_key()s)
        self.in_flight: set[Key] = set()
        self._names: dict[str, tuple[float, tuple[str, ...]]] = {}

    async def decide(
        self, batch_id: str, command: Command
    ) -> tuple[list[BatchEvent], BatchState, BatchState]:
        """Decide and append, then carry out the reactions to what was appended.
        Returns (appended events, state before, state after)."""
        events, before, after = await self.repo.execute(batch_id, command)
        await self.carry_out(react_all(events, after))
        return events, before, after

    async def carry_out(self, effects: Iterable[Effect]) -> None:
        effects = list(effects)
        i = 0
        while i < len(effects):  # in order: e.g. leave the leases, then unlist
            effect = effects[i]
            i += 1
            match effect:
                case Decide(batch_id=batch_id, command=command):
                    await self.decide(batch_id, command)
                case Dispatch():
                    # Grants side by side are independent: their leases and jobs go out
                    # at once (their JobDispatched appends still queue for the batch).
                    together = [effect]
                    while i < len(effects) and isinstance(effects[i], Dispatch):
                        together.append(effects[i])  # type: ignore[arg-type]
                        i += 1
                    await _all(self._dispatch(d) for d in together)
                case Reprioritize(message_ids=ids, priority=p, raise_only=True):
                    await self.ports.jobs.reprioritize(ids, p, True)
                case Reprioritize(message_ids=ids, priority=p, batch_id=batch_id):
                    for floor, group in (await self._floors(ids, p, batch_id)).items():
                        await self.ports.jobs.reprioritize(group, floor)
                case LeaveLease(message_id=m, batch_id=batch_id, keep_part=keep):
                    left = await self.ports.leases.leave(m, batch_id, keep_part=keep)
                    if left is not None and left.parties and left.outcome is None:
                        # others still wait: the job waits at the highest of theirs (the
                        # one that left may have raised it)
                        top = await self._highest(left.parties)
                        await self.ports.jobs.reprioritize((m,), top)
                case Unlist(batch_id=batch_id):
                    await self.ports.open_batches.remove(batch_id)
                case EndJob(outcome=outcome):
                    await self.ports.jobs.end(outcome)
                case DropQueuedJob(seq=seq):
                    await self.ports.queued_jobs.delete(seq)

    async def _floors(self, ids: tuple[int, ...], priority: Priority, batch_id: str | None
                      ) -> dict[Priority, tuple[int, ...]]:
        """The priority each job goes to: `priority`, unless other batches wait for it too
        (its lease's other parties), and one of them asks for higher."""
        leases = await asyncio.gather(*(self.ports.leases.get(m) for m in ids))
        groups: dict[Priority, list[int]] = {}
        for m, lease in zip(ids, leases, strict=True):
            others = [b for b in (lease[0].parties if lease else []) if b != batch_id]
            groups.setdefault(await self._highest(others, priority), []).append(m)
        return {p: tuple(ms) for p, ms in groups.items()}

    async def _highest(self, batch_ids: list[str], *also: Priority) -> Priority:
        """The highest priority among these batches' (and `also`)."""
        asked = [*also, *[(await self.repo.load(b))[0].priority for b in batch_ids]]
        return min(asked, key=lambda p: p.rank)

    async def _dispatch(self, d: Dispatch) -> None:
        m = d.entry.message_id
        key = (d.batch_id, m)
        self.in_flight.add(key)
        try:
            acquired = await self.ports.jobs.acquire(m, d.job_id, d.batch_id, d.force)
            if not acquired.attached:
                await self.ports.jobs.publish_job(
                    DownloadJob(job_id=d.job_id, entry=d.entry, force=d.force,
                                name_template=d.name_template, priority=d.priority,
                                chat_names=await self._other_names(d.entry.chat)))
                metrics.JOBS_PUBLISHED.inc()
            events, _, after = await self.repo.execute(d.batch_id, MarkDispatched(
                message_id=m, job_id=acquired.job_id, attached=acquired.attached,
                at=self.ports.clock.now(), for_job=d.job_id))
        finally:
            self.in_flight.discard(key)
        await self.carry_out([*react_all(events, after), *after_dispatch(after, m, events)])

    async def _other_names(self, chat: str) -> tuple[str, ...]:
        """The chat's other names, for a job whose downloader checks the allow-list by
        name, when that list names the chat by another one than the catalog's (none
        asked for otherwise: no query on the way of most files)."""
        key = chat_key(chat)
        if self.allowed_chats is None or key in self.allowed_chats:
            return ()
        now = time.monotonic()
        memo = self._names.get(key)
        if memo is not None and memo[0] > now:
            return memo[1]
        names = tuple(sorted(await self.ports.catalog.every_name(frozenset({key})) - {key}))
        if names:  # not kept while none is known: a sync may learn one any moment
            if len(self._names) > 1000:
                self._names.clear()
            self._names[key] = (now + NAMES_TTL, names)
        return names


async def _all(work: Iterable[Awaitable[None]]) -> None:
    """Every one to its end, then the first failure raised (none is left running)."""
    results = await asyncio.gather(*work, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
