"""Batch progress snapshots on core NATS (`Names.batch_progress(batch_id)`): the same body
as the HTTP batch status, read back from the read model after a change, at most one per
`interval` per batch. A batch touched again within the interval gets one snapshot when
the interval ends, read at that moment, so the last state is always published."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable

import asyncpg
from nats.aio.client import Client as NATS

from tgdl.contracts.subjects import Names
from tgdl.db.readmodel import batch_status, snapshot_json

log = logging.getLogger("tgdl.projector.snapshots")


class SnapshotPublisher:
    def __init__(self, nc: NATS, pool: asyncpg.Pool, names: Names, interval: float) -> None:
        self._nc = nc
        self._pool = pool
        self._names = names
        self._interval = interval
        self._due: dict[str, float] = {}  # batch -> when it may be published
        self._last_sent: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False
        self.published = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="batch-snapshots")

    async def stop(self) -> None:
        """Publish what is still owed, then stop."""
        if self._task is None:
            return
        # Ask the loop to end rather than cancelling it: on Python 3.11 a cancel that lands
        # as the wake-up fires is swallowed by wait_for, and the loop would run forever.
        self._closing = True
        self._wake.set()
        await self._task
        self._task = None
        if self._due:
            await self._publish(list(self._due))
            self._due.clear()

    def touch(self, batch_ids: Iterable[str]) -> None:
        for b in batch_ids:
            if b not in self._due:
                self._due[b] = self._last_sent.get(b, float("-inf")) + self._interval
        self._wake.set()

    async def _run(self) -> None:
        while not self._closing:
            self._wake.clear()
            now = time.monotonic()
            ready = [b for b, at in self._due.items() if at <= now]
            if ready:
                for b in ready:
                    del self._due[b]
                    self._last_sent[b] = now
                try:
                    await self._publish(ready)
                except Exception:  # a snapshot is a courtesy: never stop projecting for it
                    log.exception("publishing batch snapshots failed")
                # Forget batches whose interval has passed: the map stays small.
                self._last_sent = {
                    b: t for b, t in self._last_sent.items() if t + self._interval > now
                }
            wait = min(self._due.values(), default=None)
            timeout = None if wait is None else max(0.0, wait - time.monotonic())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    async def _publish(self, batch_ids: list[str]) -> None:
        async with self._pool.acquire() as conn:
            for b in batch_ids:
                status = await batch_status(conn, b)
                if status is not None:
                    await self._nc.publish(self._names.batch_progress(b), snapshot_json(status))
                    self.published += 1
