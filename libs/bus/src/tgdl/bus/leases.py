"""Download leases: at most one job per message at a time, whoever asked for it.

Key ``str(message_id)`` in the leases bucket holds a `Lease`: the job downloading the
message and the parties (batch ids) waiting for it. All changes are compare-and-set on
the entry's revision, so concurrent orchestrators and downloaders never lose a party.
"""

from __future__ import annotations

from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from tgdl.contracts.jobs import Lease
from tgdl.contracts.subjects import Names


@dataclass(frozen=True)
class Acquired:
    job_id: str
    attached: bool  # True: another job already downloads it; we wait for its outcome


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

    async def acquire(self, message_id: int, job_id: str, party: str) -> Acquired:
        """Own the message for `job_id`, or join the job already downloading it."""
        while True:
            current = await self.get(message_id)
            try:
                if current is None:
                    lease = Lease(job_id=job_id, parties=[party])
                    await self.kv.create(str(message_id), lease.model_dump_json().encode())
                    return Acquired(job_id, attached=False)
                lease, revision = current
                if party not in lease.parties:
                    lease = lease.model_copy(update={"parties": [*lease.parties, party]})
                    await self.kv.update(
                        str(message_id), lease.model_dump_json().encode(), last=revision
                    )
                return Acquired(lease.job_id, attached=lease.job_id != job_id)
            except KeyWrongLastSequenceError:
                continue  # raced with another writer: read again

    async def leave(self, message_id: int, party: str) -> Lease | None:
        """Stop waiting for the message; returns the lease left behind (None if gone).
        A lease with no parties tells its downloader to stop (see the downloader)."""
        while True:
            current = await self.get(message_id)
            if current is None:
                return None
            lease, revision = current
            if party not in lease.parties:
                return lease
            lease = lease.model_copy(
                update={"parties": [p for p in lease.parties if p != party]}
            )
            try:
                await self.kv.update(
                    str(message_id), lease.model_dump_json().encode(), last=revision
                )
                return lease
            except KeyWrongLastSequenceError:
                continue

    async def release(self, message_id: int, job_id: str) -> list[str] | None:
        """The job ended: drop its lease and return the parties that waited for it.
        None if the lease belongs to another job (this one was stale)."""
        while True:
            current = await self.get(message_id)
            if current is None or current[0].job_id != job_id:
                return None
            lease, revision = current
            try:
                await self.kv.delete(str(message_id), last=revision)
                return lease.parties
            except KeyWrongLastSequenceError:
                continue  # a party joined or left meanwhile: report the newest list
