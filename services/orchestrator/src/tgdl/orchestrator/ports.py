"""What the orchestrator needs from the world, as small interfaces.

The NATS and PostgreSQL adapters (`adapters.py`, `tgdl.bus`) implement them in
production; unit tests give in-memory fakes, so recovery, the sweep, dispatch and the
give-up path run in milliseconds without servers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from tgdl.bus.leases import Acquired
from tgdl.contracts.catalog import CatalogEntry
from tgdl.contracts.events import BatchEvent
from tgdl.contracts.jobs import DownloadJob, DownloadOutcome, FileRecord, Lease
from tgdl.contracts.status import Priority


class BatchLog(Protocol):
    """Per-batch event logs with optimistic concurrency (`tgdl.bus.eventlog.EventLog`).
    `append` raises `tgdl.bus.eventlog.ConcurrentAppend` when `expected_last_seq` is
    stale."""

    async def append(self, batch_id: str, events: Sequence[BatchEvent],
                     expected_last_seq: int) -> int: ...

    async def last_seq(self, batch_id: str) -> int: ...

    async def load(self, batch_id: str) -> tuple[list[BatchEvent], int]: ...


class Jobs(Protocol):
    """The shared job lifecycle (`tgdl.bus.jobs.JobLifecycle`), the orchestrator's part."""

    async def acquire(self, message_id: int, job_id: str, party: str,
                      force: bool = False) -> Acquired: ...

    async def publish_job(self, job: DownloadJob) -> None: ...

    async def reprioritize(self, message_ids: Sequence[int], priority: Priority,
                           raise_only: bool = False) -> None: ...

    async def end(self, outcome: DownloadOutcome) -> DownloadOutcome | None: ...


class LeaseBook(Protocol):
    """Reading and leaving download leases (`tgdl.bus.leases.Leases`)."""

    async def get(self, message_id: int) -> tuple[Lease, int] | None: ...

    async def leave(self, message_id: int, party: str,
                    keep_part: bool = False) -> Lease | None: ...


class QueuedJobs(Protocol):
    """Job messages still stored in the jobs work queue, by stream sequence."""

    async def get(self, seq: int) -> DownloadJob | None: ...

    async def delete(self, seq: int) -> None: ...


class OpenBatchIndex(Protocol):
    """The batches not finished with (`open_index.OpenBatches`): a restart's checklist."""

    async def add(self, batch_id: str) -> None: ...

    async def remove(self, batch_id: str) -> None: ...

    async def list(self) -> list[str]: ...

    async def listed_for(self, batch_id: str) -> timedelta | None: ...


class Catalog(Protocol):
    async def get_many(self, ids: Sequence[int]) -> Mapping[int, CatalogEntry]: ...

    async def every_name(self, chats: frozenset[str]) -> frozenset[str]:
        """`chats` with the other names of the same chats (tgdl.db.catalog.every_name)."""
        ...


class FileRecordBook(Protocol):
    """Where Telegram files are complete, by `FileLocation.file_key`
    (`tgdl.bus.samefile.FileRecords`)."""

    async def get(self, key: str) -> tuple[FileRecord, int] | None: ...


class Clock(Protocol):
    def now(self) -> datetime: ...


@dataclass(frozen=True)
class Ports:
    log: BatchLog
    jobs: Jobs
    leases: LeaseBook
    queued_jobs: QueuedJobs
    open_batches: OpenBatchIndex
    catalog: Catalog
    clock: Clock
    files: FileRecordBook | None = None  # None: no file is linked at the start
