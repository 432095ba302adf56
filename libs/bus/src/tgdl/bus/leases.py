"""Download leases: at most one job per message at a time, whoever asked for it.

Key ``str(message_id)`` in the leases bucket holds a `Lease`: the job downloading the
message and the parties (batch ids) waiting for it. All changes are compare-and-set on
the entry's revision, so concurrent orchestrators and downloaders never lose a party.

A lease whose parties all left tells its downloader to stop (keeping the .part file if
one of them left for a pause; if the job completes the file all the same, those that
paused are told too). A job ends in two steps:
`end` records the outcome and freezes the parties, the downloader publishes the
outcome to them, then `release` deletes the lease.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.errors import BadRequestError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from tgdl.bus.eventlog import WRONG_LAST_SEQUENCE
from tgdl.contracts.jobs import DownloadOutcome, Lease
from tgdl.contracts.status import OutcomeStatus
from tgdl.contracts.subjects import Names


def without(lease: Lease, party: str, keep_part: bool) -> Lease:
    """The lease once `party` stopped waiting: for a pause (`keep_part`), a job nobody
    else wants keeps its bytes, and the party is told if the file completes anyway."""
    return lease.model_copy(update={
        "parties": [p for p in lease.parties if p != party],
        "keep_part": lease.keep_part or keep_part,
        "paused": [*lease.paused, party] if keep_part and party not in lease.paused
        else lease.paused})


def addressees(lease: Lease, outcome: DownloadOutcome) -> list[str]:
    """Who learns how the job ended: its parties, and for a completed file those that
    paused too (their file is whole: completed, not paused)."""
    if outcome.status != OutcomeStatus.completed:
        return lease.parties
    return list(dict.fromkeys([*lease.parties, *lease.paused]))


@dataclass(frozen=True)
class Acquired:
    job_id: str
    attached: bool  # True: another job already downloads it; we wait for its outcome


class Rejoined(Exception):
    """A job about to end as cancelled (nobody wanted it) was joined again meanwhile, e.g.
    by the resume of a paused batch: it must go on instead."""


class LeaseBusy(Exception):
    """An ended job's lease was not handed over in time (its downloader died mid-way)."""


class Leases:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext, names: Names) -> Leases:
        return cls(await js.key_value(names.leases_bucket))

    async def get(self, message_id: int) -> tuple[Lease, int] | None:
        try:
            entry = await self.kv.get(str(message_id))
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        return Lease.model_validate_json(entry.value), entry.revision

    async def _put(self, message_id: int, lease: Lease, revision: int | None) -> int:
        """Create (revision None) or compare-and-set; returns the new revision."""
        data = lease.model_dump_json().encode()
        if revision is None:
            return await self.kv.create(str(message_id), data)
        return await self.kv.update(str(message_id), data, last=revision)

    async def acquire(
        self, message_id: int, job_id: str, party: str, force: bool = False,
        patience: float = 90.0,
    ) -> Acquired:
        """Own the message for `job_id`, or join the job already downloading it (a party
        asking for `force` makes that job fetch the file again even if it exists)."""
        deadline = time.monotonic() + patience
        fresh = Lease(job_id=job_id, parties=[party], force=force)
        try:  # most messages are not being downloaded: try to take it in one round trip
            await self._put(message_id, fresh, None)
            return Acquired(job_id, attached=False)
        except KeyWrongLastSequenceError:
            pass  # someone holds it (or held it): look
        while True:
            current = await self.get(message_id)
            try:
                if current is None:
                    await self._put(message_id, fresh, None)
                    return Acquired(job_id, attached=False)
                lease, revision = current
                if lease.outcome is not None:
                    # the job is handing over its outcome; it will be gone in a moment
                    if time.monotonic() > deadline:
                        raise LeaseBusy(f"message {message_id}: job {lease.job_id} ended")
                    await asyncio.sleep(0.05)
                    continue
                if party not in lease.parties or (force and not lease.force):
                    parties = lease.parties if party in lease.parties else [*lease.parties, party]
                    joined = lease.model_copy(
                        update={"parties": parties, "force": lease.force or force})
                    await self._put(message_id, joined, revision)
                return Acquired(lease.job_id, attached=lease.job_id != job_id)
            except KeyWrongLastSequenceError:
                continue  # raced with another writer: read again

    async def leave(self, message_id: int, party: str, keep_part: bool = False) -> Lease | None:
        """Stop waiting for the message; returns the lease left behind (None if gone).
        `keep_part`: the party only pauses, so a job nobody else wants keeps its bytes."""
        while True:
            current = await self.get(message_id)
            if current is None:
                return None
            lease, revision = current
            if party not in lease.parties or lease.outcome is not None:
                return lease
            left = without(lease, party, keep_part)
            try:
                await self._put(message_id, left, revision)
                return left
            except KeyWrongLastSequenceError:
                continue

    async def claim(self, message_id: int, job_id: str, job_seq: int) -> bool:
        """Bind the lease to one copy of its job (its stream sequence). True for that copy,
        again on its redelivery; False for any other copy or a lease of another job."""
        return await self.claim_at(message_id, job_id, job_seq) is not None

    async def claim_at(self, message_id: int, job_id: str, job_seq: int,
                       seen: tuple[Lease, int] | None = None) -> tuple[Lease, int] | None:
        """`claim`, returning the claimed lease and its revision (None: not this copy's).
        `seen`: the lease as recently seen, saving a read. It only ever leads to a
        compare-and-set (a stale one fails and reads); any other answer is read fresh."""
        current = seen
        while True:
            fresh = current is None
            if fresh:
                current = await self.get(message_id)
            if (current is None or current[0].job_id != job_id
                    or current[0].claimed_by is not None):
                if not fresh:
                    current = None
                    continue
                if current is None or current[0].job_id != job_id:
                    return None
                return current if current[0].claimed_by == job_seq else None
            lease, revision = current
            claimed = lease.model_copy(update={"claimed_by": job_seq})
            try:
                return claimed, await self._put(message_id, claimed, revision)
            except KeyWrongLastSequenceError:
                current = None
                continue

    async def end(self, outcome: DownloadOutcome) -> DownloadOutcome | None:
        """Record how the job ended and freeze its parties (no one can join or leave an
        ended job). Returns the outcome addressed to those parties, or None when the
        lease belongs to another job: this one was stale."""
        ended = await self.end_at(outcome)
        return ended[0] if ended else None

    async def end_at(self, outcome: DownloadOutcome, seen: tuple[Lease, int] | None = None
                     ) -> tuple[DownloadOutcome, int] | None:
        """`end`, also returning the lease's revision after it (for `release`). `seen`:
        the lease as its downloader last knew it, saving a read when nobody changed it
        since (the compare-and-set catches a change). A cancel always reads: it must see
        whether a party came back."""
        current = seen if outcome.status != OutcomeStatus.cancelled else None
        while True:
            fresh = current is None
            if fresh:
                current = await self.get(outcome.message_id)
            if current is None or current[0].job_id != outcome.job_id:
                if not fresh:  # only a write is ever based on what was seen
                    current = None
                    continue
                return None
            lease, revision = current
            if lease.outcome is not None:
                if not fresh:
                    current = None
                    continue
                return lease.outcome, revision  # a previous delivery of this job got this far
            if outcome.status == OutcomeStatus.cancelled and lease.parties:
                raise Rejoined(f"message {outcome.message_id}: {lease.parties} wait again")
            addressed = outcome.model_copy(update={"parties": addressees(lease, outcome)})
            try:
                revision = await self._put(
                    outcome.message_id, lease.model_copy(update={"outcome": addressed}), revision
                )
                return addressed, revision
            except KeyWrongLastSequenceError:
                current = None
                continue

    async def release(self, message_id: int, job_id: str, revision: int | None = None) -> None:
        """Delete the ended job's lease: the message is free for the next request.
        `revision`: the lease's revision as `end_at` left it, saving a read."""
        while True:
            if revision is None:
                current = await self.get(message_id)
                if current is None or current[0].job_id != job_id:
                    return
                revision = current[1]
            try:
                await self.kv.delete(str(message_id), last=revision)
                return
            except (KeyWrongLastSequenceError, BadRequestError) as exc:
                # nats-py reports a stale delete as a plain BadRequestError
                if getattr(exc, "err_code", WRONG_LAST_SEQUENCE) != WRONG_LAST_SEQUENCE:
                    raise
                revision = None  # changed since: read it again
                continue
