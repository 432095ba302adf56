"""The life of one download job, the same for every side that touches it.

    acquire (orchestrator) -> publish_job -> claim (downloader) -> heartbeats
        -> end: record the outcome in the lease, publish it, release the lease

The lease (see `leases`) says which job downloads a message and who waits for it; the
job message stays unacknowledged in JetStream until its outcome is handed over, so a
crash at any step is finished by whoever next sees the job or its lease. The downloader
ends jobs it ran; the orchestrator ends a job JetStream stopped redelivering. Both go
through `end`, so an outcome is always published the same way (deduplicated by
``Nats-Msg-Id: <job_id>:done``) and the lease is always released after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from pydantic import BaseModel

from tgdl.bus.leases import Acquired, Leases
from tgdl.contracts.jobs import DownloadJob, DownloadOutcome, Lease
from tgdl.contracts.status import Priority
from tgdl.contracts.subjects import Names

if TYPE_CHECKING:
    from tgdl.bus.admission import Admission


@dataclass(frozen=True)
class Ack:
    seq: int  # stream sequence of the stored message (of the first copy, if a duplicate)
    duplicate: bool


class StreamPublisher(Protocol):
    """Publishing to JetStream with deduplication, and asking whether a message is still
    stored (a work-queue message is deleted once acknowledged)."""

    async def publish(self, subject: str, body: BaseModel, *, stream: str,
                      msg_id: str) -> Ack: ...

    async def stored(self, stream: str, seq: int) -> bool: ...


class JetStreamPublisher:
    """`StreamPublisher` over a nats-py JetStream context (a FastStream broker's too:
    ``broker.connection.jetstream()``)."""

    def __init__(self, js) -> None:
        self._js = js

    async def publish(self, subject: str, body: BaseModel, *, stream: str,
                      msg_id: str) -> Ack:
        ack = await self._js.publish(subject, body.model_dump_json().encode(), stream=stream,
                                     headers={"Nats-Msg-Id": msg_id})
        return Ack(ack.seq, bool(ack.duplicate))

    async def stored(self, stream: str, seq: int) -> bool:
        from nats.js.errors import NotFoundError

        try:
            await self._js.get_msg(stream, seq)
            return True
        except NotFoundError:
            return False


class BrokerPublisher(JetStreamPublisher):
    """`StreamPublisher` through a FastStream `NatsBroker`: each message goes out through
    the publisher the service declared for its stream (so what the AsyncAPI document
    shows is what is sent), reading stored messages over the broker's own connection."""

    def __init__(self, broker) -> None:
        self._broker = broker

    @property
    def _js(self):  # the connection exists only once the broker has started
        return self._broker.connection.jetstream()

    def _declared(self, stream: str):
        for publisher in self._broker.publishers:
            if getattr(publisher.stream, "name", None) == stream:
                return publisher
        raise LookupError(f"the service declares no publisher for stream {stream}")

    async def publish(self, subject: str, body: BaseModel, *, stream: str,
                      msg_id: str) -> Ack:
        ack = await self._declared(stream).publish(body, subject=subject,
                                                   headers={"Nats-Msg-Id": msg_id})
        return Ack(ack.seq, bool(ack.duplicate))


class JobLostTooOften(RuntimeError):
    """A job's copies kept being acknowledged before its lease could use them."""


class JobLifecycle:
    MAX_REQUEUES = 8

    def __init__(self, leases: Leases, publisher: StreamPublisher, names: Names,
                 admission: Admission | None = None) -> None:
        self.leases = leases
        self._publisher = publisher
        self._names = names
        # Orchestrators queue through the waiting room (priorities under the global cap);
        # without one, a job goes straight into the queue (tools and tests).
        self.admission = admission

    # --- the orchestrator's side ---------------------------------------------------------

    async def acquire(self, message_id: int, job_id: str, party: str,
                      force: bool = False) -> Acquired:
        """Own the message for `job_id`, or join the job already downloading it."""
        return await self.leases.acquire(message_id, job_id, party, force)

    async def publish_job(self, job: DownloadJob) -> None:
        """Queue the job once, through the waiting room when there is one and someone
        waits in it or the queue is full."""
        if self.admission is None:
            await self._queue(job)
            return
        if await self.admission.straight_in(lambda: self._queue(job)):
            return
        ack = await self.admission.enqueue(job)
        if ack.duplicate and not await self._publisher.stored(self._names.waiting_stream,
                                                              ack.seq):
            await self._queue(job)  # admitted before: still queued, or it ran (see _queue)
        await self.admission.try_admit()

    async def reprioritize(self, message_ids: Sequence[int], priority: Priority,
                           raise_only: bool = False) -> None:
        if self.admission is not None:
            await self.admission.reprioritize(message_ids, priority, raise_only)

    async def _queue(self, job: DownloadJob) -> None:
        """Into the queue once. ``Nats-Msg-Id`` drops a re-publish; if the copy it matched
        already ran and was acknowledged, the lease just taken would have no job behind
        it, so the job is queued again under the next numbered id (itself deduplicated)."""
        stream = self._names.jobs_stream
        for n in range(self.MAX_REQUEUES + 1):
            msg_id = job.job_id if n == 0 else f"{job.job_id}:requeued-{n}"
            ack = await self._publisher.publish(self._names.download_jobs, job,
                                                stream=stream, msg_id=msg_id)
            if not ack.duplicate or await self._publisher.stored(stream, ack.seq):
                return
        raise JobLostTooOften(f"job {job.job_id} was queued {self.MAX_REQUEUES} times already")

    # --- the downloader's side -----------------------------------------------------------

    async def claim(self, message_id: int, job_id: str, job_seq: int,
                    seen: tuple[Lease, int] | None = None) -> tuple[Lease, int] | None:
        """Bind the lease to this copy of the job (see `Leases.claim_at`); returns the
        claimed lease and its revision, None when another copy or job holds it."""
        return await self.leases.claim_at(message_id, job_id, job_seq, seen)

    # --- ending (either side) ------------------------------------------------------------

    async def end(self, outcome: DownloadOutcome,
                  seen: tuple[Lease, int] | None = None) -> DownloadOutcome | None:
        """Record how the job ended, tell every waiting party, free the message. Returns
        the outcome as addressed, or None when the lease belongs to another job (this
        copy was stale and has nothing to say). `seen`: see `Leases.end_at`."""
        ended = await self.leases.end_at(outcome, seen)
        if ended is None:
            return None
        addressed, revision = ended
        await self.hand_over(addressed, revision)
        return addressed

    async def hand_over(self, addressed: DownloadOutcome, revision: int | None = None) -> None:
        """Publish an ended job's outcome and release its lease (idempotent: a crash in
        between is finished by the next delivery, which finds the outcome in the lease).
        `revision`: the ended lease's, when the caller knows it."""
        await self._publisher.publish(
            self._names.file_done(addressed.message_id), addressed,
            stream=self._names.outcomes_stream, msg_id=f"{addressed.job_id}:done")
        await self.leases.release(addressed.message_id, addressed.job_id, revision)
