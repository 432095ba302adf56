"""Priorities under the global cap: the waiting room in front of the job queue.

Design. The global cap stays what it was: `max_ack_pending` of the one `downloaders`
consumer, which JetStream enforces across every downloader replica. That consumer hands
out jobs in the order they entered the queue, so priority is decided before a job enters
it. A granted job first waits in the WAITING stream (subject
``<ns>.job.waiting.<priority>.<message_id>``); orchestrators admit jobs from there into
the queue only while it has room under the cap (running + queued < cap), best first. The
queue therefore holds no backlog to overtake, and a high job granted now starts at the
next free slot, whichever batch or replica frees it. (Per-priority consumers were the
other way: each would have its own max_ack_pending, and the cap would need a semaphore of
its own across replicas.)

Best first, without starving anyone: a job's rank is its priority (high 0, normal 1,
low 2) raised one class for every `aging` seconds it has waited (TGDL_PRIORITY_AGING);
the best rank goes first, the longest waiting among equals. So a low job waits at most
about two agings before it competes with new high jobs as their equal, and older.

A job granted while nothing waits and the queue has room skips the waiting room
(`straight_in`): it overtakes no one, and it saves the waiting room's publish, reads and
delete, which most small files would otherwise pay. Admission runs after each enqueue,
after each outcome, and on a short tick (a slot that
frees after its outcome was handled). Two orchestrators admitting at once may put a job
more than the room in the queue: that delays the order by a job, never breaks the cap.
A job is moved (re-published at its new priority, then its old copy deleted) only while
it waits; if a copy is admitted meanwhile, two copies of one job may reach the queue and
the lease lets only one of them run (`Leases.claim_at`), so a file never has two jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError

from tgdl.bus.jobs import Ack
from tgdl.contracts.jobs import DownloadJob
from tgdl.contracts.status import PRIORITY_ORDER, Priority
from tgdl.contracts.subjects import Names

log = logging.getLogger("tgdl.bus.admission")

SINCE = "Tgdl-Waiting-Since"  # header: when the job began to wait (kept when it moves)
MSG_ID = "Nats-Msg-Id"


@dataclass(frozen=True)
class Waiting:
    """The head (longest waiting job) of one priority's line."""

    seq: int
    priority: Priority
    since: float  # epoch seconds


def rank(w: Waiting, now: float, aging: float) -> tuple[int, float]:
    gained = int(max(0.0, now - w.since) // aging)
    return max(0, w.priority.rank - gained), w.since


def choose(heads: Iterable[Waiting], now: float, aging: float) -> Waiting | None:
    """The job to admit next (see the module's rule)."""
    return min(heads, key=lambda w: (*rank(w, now, aging), w.priority.rank), default=None)


class Admission:
    def __init__(self, js: JetStreamContext, names: Names, aging: float,
                 clock: Callable[[], float] = time.time) -> None:
        self._js = js
        self._names = names
        self._aging = aging
        self._clock = clock
        self._lock = asyncio.Lock()
        self._again = False

    # --- waiting ---------------------------------------------------------------------------

    async def enqueue(self, job: DownloadJob, msg_id: str | None = None,
                      since: float | None = None) -> Ack:
        """Put a granted job in its priority's line (deduplicated by `msg_id`)."""
        headers = {MSG_ID: msg_id or job.job_id, SINCE: repr(since or self._clock())}
        ack = await self._js.publish(
            self._names.waiting_job(job.priority, job.entry.message_id),
            job.model_dump_json().encode(), stream=self._names.waiting_stream, headers=headers)
        return Ack(ack.seq, bool(ack.duplicate))

    async def reprioritize(self, message_ids: Sequence[int], priority: Priority,
                           raise_only: bool = False) -> list[int]:
        """Move the waiting jobs of these messages to `priority`; returns those moved.
        A job already admitted goes at the priority it had."""
        moved = []
        for m in message_ids:
            raw = await self._head(self._names.waiting_jobs(message_id=m))
            if raw is None:
                continue
            job = DownloadJob.model_validate_json(raw.data or b"")
            if job.priority == priority or (raise_only and priority.rank >= job.priority.rank):
                continue
            headers = raw.headers or {}
            await self.enqueue(job.model_copy(update={"priority": priority}),
                               msg_id=f"{headers.get(MSG_ID, job.job_id)}:{priority}@{raw.seq}",
                               since=_since(raw))
            await self._delete(raw.seq)
            moved.append(m)
        if moved:
            await self.try_admit()
        return moved

    async def straight_in(self, queue: Callable[[], Awaitable[None]]) -> bool:
        """Send a new job straight into the queue (`queue()`) when nothing waits and the
        queue has room under the cap; False: it must wait. Under the admission's lock, so
        the jobs of one decision see each other's place taken (two orchestrators deciding
        at once may both send one in: that delays the order by a job, never breaks the
        cap)."""
        names = self._names
        async with self._lock:
            waiting, info = await asyncio.gather(
                self._head(names.waiting_jobs()),
                self._js.consumer_info(names.jobs_stream, names.downloader_consumer))
            if waiting is not None or _room(info) <= 0:
                return False
            await queue()
            return True

    # --- admitting -------------------------------------------------------------------------

    async def admit(self) -> None:
        """Fill the queue's room under the cap from the waiting room, best first. A call
        while a pass runs makes that pass go round once more."""
        self._again = True
        if self._lock.locked():
            return
        async with self._lock:
            while self._again:
                self._again = False
                await self._admit_once()

    async def try_admit(self) -> None:
        """`admit`, where a failure must not fail the caller: the job waits, and the
        tick admits it once NATS answers again."""
        try:
            await self.admit()
        except Exception as exc:
            log.warning("admission failed (%r); the next tick tries again", exc)

    async def _admit_once(self) -> None:
        names = self._names
        # Mostly nothing waits (every file's outcome and the tick come here): one read
        # says so, before asking the queue for its room.
        if await self._head(names.waiting_jobs()) is None:
            return
        room = _room(await self._js.consumer_info(names.jobs_stream, names.downloader_consumer))
        heads: dict[Priority, RawStreamMsg | None] = {}
        moved = list(PRIORITY_ORDER)  # the lines whose head must be read (again)
        while room > 0:
            # Only the line a job left is read again: a job that joins any line meanwhile
            # sets `_again`, and the next pass reads them all.
            for p, raw in zip(moved, await asyncio.gather(
                    *(self._head(names.waiting_jobs(p)) for p in moved)), strict=True):
                heads[p] = raw
            by_seq = {raw.seq: raw for raw in heads.values() if raw is not None}
            pick = choose((Waiting(raw.seq, Priority(raw.subject.split(".")[-2]), _since(raw))
                           for raw in by_seq.values()), self._clock(), self._aging)
            if pick is None:
                return
            raw = by_seq[pick.seq]
            msg_id = (raw.headers or {}).get(MSG_ID) or f"waiting-{raw.seq}"
            await self._js.publish(names.download_jobs, raw.data or b"",
                                   stream=names.jobs_stream, headers={MSG_ID: msg_id})
            await self._delete(raw.seq)
            moved = [pick.priority]
            room -= 1

    async def _head(self, subject: str):
        try:
            return await self._js.get_msg(self._names.waiting_stream, seq=1, subject=subject,
                                          next=True)
        except NotFoundError:
            return None

    async def _delete(self, seq: int) -> None:
        with contextlib.suppress(NotFoundError):  # another orchestrator took it meanwhile
            await self._js.delete_msg(self._names.waiting_stream, seq)


def _room(info) -> int:
    """Jobs the queue can take under the cap: neither running nor queued."""
    return info.config.max_ack_pending - info.num_ack_pending - info.num_pending


def _since(raw) -> float:
    with contextlib.suppress(TypeError, ValueError):
        return float((raw.headers or {}).get(SINCE))
    return raw.time.timestamp() if getattr(raw, "time", None) else time.time()


async def admit_forever(admission: Admission, interval: float, stop: asyncio.Event) -> None:
    """The tick: admit what an outcome handled before its job's ack could not."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
        try:
            await admission.admit()
        except Exception as exc:  # NATS away: the next tick tries again
            log.debug("admission failed: %r", exc)
