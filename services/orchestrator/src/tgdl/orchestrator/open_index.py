"""The batches the orchestrator has not finished with, so a restart looks at those only
instead of replaying every batch ever run.

A batch id is added *before* its first event is appended and removed only after the
batch's closing event and its effects (cancelled leases left), so a crash at any point
leaves the batch listed: the worst case is a listed batch with nothing left to do.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, NoKeysError
from nats.js.kv import KeyValue

from tgdl.contracts.subjects import Names


class OpenBatches:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext, names: Names) -> OpenBatches:
        return cls(await js.key_value(names.open_batches_bucket))

    async def add(self, batch_id: str) -> None:
        await self._kv.put(batch_id, datetime.now(UTC).isoformat().encode())

    async def remove(self, batch_id: str) -> None:
        await self._kv.delete(batch_id)

    async def list(self) -> list[str]:
        try:
            return sorted(await self._kv.keys())
        except NoKeysError:
            return []

    async def listed_for(self, batch_id: str) -> timedelta | None:
        """How long ago the id was added (None if it is not listed)."""
        try:
            entry = await self._kv.get(batch_id)
        except KeyNotFoundError:
            return None
        try:
            return datetime.now(UTC) - datetime.fromisoformat((entry.value or b"").decode())
        except ValueError:
            return timedelta(0)
