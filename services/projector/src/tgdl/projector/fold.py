"""The fold rules: what each batch event, download outcome and progress report changes in
the read model, as plain row changes with no SQL (see `sql.py` for how they are written).

Batch files change only through their batch's events, which arrive in order. A job row
is written from two streams whose relative order is not fixed (progress reports, an
outcome), so every job change is a `merge` of the row as it stands that gives the same
result in any order: an outcome is final, and progress only moves forward. That is what
lets a rebuild, which reads the streams in another interleaving, reproduce the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from tgdl.contracts.catalog import CatalogEntry
from tgdl.contracts.errors import Failure
from tgdl.contracts.events import (
    BatchCancelled,
    BatchEvent,
    BatchFinished,
    BatchPaused,
    BatchPruned,
    BatchResumed,
    BatchStarted,
    ConcurrencyChanged,
    FileCompleted,
    FileFailed,
    JobDispatched,
    PermitGranted,
    PriorityChanged,
)
from tgdl.contracts.jobs import DownloadOutcome, DownloadProgress
from tgdl.contracts.paths import relative_path
from tgdl.contracts.status import (
    TERMINAL_JOB_STATES,
    FileStatus,
    JobState,
    OutcomeStatus,
    OverallStatus,
)

# --- rows ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchRow:
    batch_id: str
    kind: str
    max_concurrent: int
    force: bool
    total_files: int
    status: OverallStatus
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None
    rule_id: str | None = None  # the watch rule that started it
    priority: str = "normal"
    name_template: str | None = None  # the one it started with (None: before it was kept)


@dataclass(frozen=True)
class FileRow:
    batch_id: str
    message_id: int
    position: int
    status: FileStatus
    job_id: str | None = None
    total_size: int | None = None
    file_path: str | None = None
    relative_path: str | None = None
    already_downloaded: bool = False
    same_file_as: int | None = None  # linked to that message's copy of the same file
    error: str | None = None
    detail: str | None = None
    suggestion: str | None = None


@dataclass(frozen=True)
class JobRow:
    job_id: str
    message_id: int
    state: JobState
    updated_at: datetime
    downloaded_size: int = 0
    total_size: int | None = None
    # The live columns describe a running job; a finished job's row is fully determined
    # by its outcome, whatever progress was seen before it.
    download_speed: int | None = None
    eta_seconds: int | None = None
    wait_seconds: int | None = None
    attempt: int = 1
    file_path: str | None = None
    relative_path: str | None = None
    error: str | None = None
    detail: str | None = None
    suggestion: str | None = None
    hash_verified: bool | None = None  # from the outcome: the bytes matched Telegram's hashes
    same_file_as: int | None = None  # from the outcome: linked, not downloaded


# --- changes to batches and their files ---------------------------------------------------


@dataclass(frozen=True)
class InsertBatch:
    batch: BatchRow
    files: tuple[FileRow, ...]


@dataclass(frozen=True)
class UpdateFile:
    batch_id: str
    message_id: int
    values: dict[str, Any] = field(hash=False)


@dataclass(frozen=True)
class CancelFiles:
    """Files of `message_ids` that are not yet completed, failed or cancelled."""

    batch_id: str
    message_ids: tuple[int, ...]


@dataclass(frozen=True)
class UpdateBatch:
    batch_id: str
    values: dict[str, Any] = field(hash=False)


# --- changes to jobs (merged into the row as it stands) -----------------------------------


@dataclass(frozen=True)
class ApplyOutcome:
    outcome: DownloadOutcome

    @property
    def job_id(self) -> str:
        return self.outcome.job_id

    def merge(self, existing: JobRow | None) -> JobRow | None:
        o = self.outcome
        completed = o.status == OutcomeStatus.completed
        return JobRow(
            job_id=o.job_id,
            message_id=o.message_id,
            state=JobState(o.status),
            updated_at=o.at,
            # a job stopped by a pause says how many bytes its .part kept
            downloaded_size=(o.size or 0) if completed else (o.downloaded_size or 0),
            total_size=o.size if completed else None,
            file_path=o.file_path,
            relative_path=o.relative_path,
            hash_verified=o.hash_verified,
            same_file_as=o.same_file_as if completed else None,
            **failure_columns(o.failure),
        )


def is_older(progress: DownloadProgress, than: JobRow) -> bool:
    return (progress.at, progress.downloaded_size) < (than.updated_at, than.downloaded_size)


@dataclass(frozen=True)
class ApplyProgress:
    progress: DownloadProgress

    @property
    def job_id(self) -> str:
        return self.progress.job_id

    def merge(self, existing: JobRow | None) -> JobRow | None:
        p = self.progress
        if existing is not None:
            if existing.state in TERMINAL_JOB_STATES:
                return None  # the outcome is final
            if is_older(p, existing):
                return None  # never move back to an older report
        return JobRow(
            job_id=p.job_id,
            message_id=p.message_id,
            state=p.job_state,
            updated_at=p.at,
            downloaded_size=p.downloaded_size,
            total_size=p.total_size,
            download_speed=p.download_speed,
            eta_seconds=p.estimated_time_remaining,
            wait_seconds=p.wait_seconds,
            attempt=p.attempt,
        )


def newer_progress(a: DownloadProgress, b: DownloadProgress) -> DownloadProgress:
    """The more recent of two reports on the same job (the later one on a tie)."""
    return a if (a.at, a.downloaded_size) > (b.at, b.downloaded_size) else b


JobChange = ApplyOutcome | ApplyProgress
@dataclass(frozen=True)
class DeleteBatch:
    """A finished batch was pruned: its rows (and its files' rows) go."""

    batch_id: str


BatchChange = InsertBatch | UpdateFile | CancelFiles | UpdateBatch | DeleteBatch
Change = BatchChange | JobChange


# --- the fold -------------------------------------------------------------------------------


def failure_columns(failure: Failure | None) -> dict[str, str | None]:
    """A failure as the read model stores it: one column per field (all None: none)."""
    if failure is None:
        return {"error": None, "detail": None, "suggestion": None}
    return {"error": failure.error.value, "detail": failure.detail,
            "suggestion": failure.suggestion}


def _relative(entry: CatalogEntry, template: str | None) -> str | None:
    try:
        return str(relative_path(entry, template))
    except ValueError:  # no media: the orchestrator never schedules it, but do not choke
        return None


def _started(e: BatchStarted) -> InsertBatch:
    rows: dict[int, FileRow] = {}
    for entry in e.to_download:
        rows[entry.message_id] = FileRow(
            e.batch_id, entry.message_id, 0, FileStatus.pending,
            total_size=entry.size, relative_path=_relative(entry, e.name_template),
        )
    for done in e.already_downloaded:
        rows[done.message_id] = FileRow(
            e.batch_id, done.message_id, 0, FileStatus.completed, total_size=done.size,
            file_path=done.file_path, relative_path=done.relative_path,
            already_downloaded=True, same_file_as=done.same_file_as,
        )
    for failure in e.failed_to_start:
        rows[failure.message_id] = FileRow(
            e.batch_id, failure.message_id, 0, FileStatus.failed,
            **failure_columns(failure),
        )
    # Request order; anything not in the request (never expected) goes last.
    order = list(dict.fromkeys([*e.requested_ids, *rows]))
    files = tuple(
        replace(rows[m], position=i) for i, m in enumerate(m for m in order if m in rows)
    )
    batch = BatchRow(
        batch_id=e.batch_id, kind=e.kind, max_concurrent=e.max_concurrent, force=e.force,
        total_files=len(e.requested_ids), status=OverallStatus.in_progress,
        created_at=e.at, updated_at=e.at, rule_id=e.rule_id, priority=e.priority,
        name_template=e.name_template,
    )
    return InsertBatch(batch, files)


def fold_event(event: BatchEvent) -> list[Change]:
    if isinstance(event, BatchStarted):
        return [_started(event)]
    if isinstance(event, BatchPruned):
        return [DeleteBatch(event.batch_id)]
    # A file's event changes its file row only: the batch row (and its updated_at) changes
    # with the batch's own state, so a file costs no batch-row write.
    b, at = event.batch_id, event.at
    match event:
        case PermitGranted(message_id=m, job_id=job):
            return [UpdateFile(b, m, {"status": FileStatus.queued, "job_id": job})]
        case JobDispatched(message_id=m, job_id=job):
            # Attached: the batch waits for another request's job, so it follows that one.
            # The job's own row waits for its first report (progress or outcome): until
            # then the file shows as queued, and a dispatch costs no row of its own.
            return [UpdateFile(b, m, {"job_id": job})]
        case FileCompleted(message_id=m):
            return [UpdateFile(b, m, {
                "status": FileStatus.completed, "job_id": event.job_id,
                "file_path": event.file_path, "relative_path": event.relative_path,
                "total_size": event.size, "same_file_as": event.same_file_as,
                **failure_columns(None),
            })]
        case FileFailed(message_id=m):
            values: dict[str, Any] = {"status": FileStatus.failed,
                                      **failure_columns(event.failure)}
            if event.job_id is not None:
                values["job_id"] = event.job_id
            return [UpdateFile(b, m, values)]
        case BatchCancelled(stopped=stopped):
            return [CancelFiles(b, tuple(stopped)),
                    UpdateBatch(b, {"status": OverallStatus.cancelled, "finished_at": at,
                                    "updated_at": at})]
        case BatchPaused(stopped=stopped):
            return [*(UpdateFile(b, m, {"status": FileStatus.paused}) for m in stopped),
                    UpdateBatch(b, {"status": OverallStatus.paused, "updated_at": at})]
        case BatchResumed(resumed=resumed):
            # back to waiting for a permit; the grants that follow make them queued
            return [*(UpdateFile(b, m, {"status": FileStatus.pending}) for m in resumed),
                    UpdateBatch(b, {"status": OverallStatus.in_progress, "updated_at": at})]
        case ConcurrencyChanged(max_concurrent=n):
            return [UpdateBatch(b, {"max_concurrent": n, "updated_at": at})]
        case PriorityChanged(priority=p):
            return [UpdateBatch(b, {"priority": p.value, "updated_at": at})]
        case BatchFinished(overall_status=status):
            return [UpdateBatch(b, {"status": OverallStatus(status), "finished_at": at,
                                    "updated_at": at})]
    raise TypeError(f"unknown event {type(event).__name__}")


def fold_outcome(outcome: DownloadOutcome) -> list[Change]:
    return [ApplyOutcome(outcome)]


def fold_progress(progress: DownloadProgress) -> list[Change]:
    return [ApplyProgress(progress)]
