"""The batch as a decider: ``decide(command, state) -> events``, ``evolve(state, event)``.

Pure: no I/O, no clock (commands carry the time). Every rule of a batch lives here:
permits never exceed ``max_concurrent``, a file is granted once, cancel stops what is
pending or running and keeps what completed, and the batch finishes exactly once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType

from tgdl.contracts.catalog import CatalogEntry
from tgdl.contracts.errors import ErrorCode, Failure, FileFailure
from tgdl.contracts.events import (
    AlreadyDownloaded,
    BatchCancelled,
    BatchEvent,
    BatchFinished,
    BatchStarted,
    FileCompleted,
    FileFailed,
    JobDispatched,
    PermitGranted,
)
from tgdl.contracts.status import BatchKind, OutcomeStatus


class FileState(StrEnum):
    pending = "pending"  # waiting for a permit
    running = "running"  # holds a permit: queued, downloading, or waiting on another job
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL = frozenset({FileState.completed, FileState.failed, FileState.cancelled})


@dataclass(frozen=True)
class BatchState:
    batch_id: str | None = None  # None: the batch does not exist yet
    kind: BatchKind = BatchKind.batch
    max_concurrent: int = 0
    force: bool = False
    order: tuple[int, ...] = ()  # files to download, in grant order
    entries: Mapping[int, CatalogEntry] = field(default_factory=lambda: MappingProxyType({}))
    files: Mapping[int, FileState] = field(default_factory=lambda: MappingProxyType({}))
    jobs: Mapping[int, str] = field(default_factory=lambda: MappingProxyType({}))
    dispatched: frozenset[int] = frozenset()
    completed_before: int = 0  # already downloaded at start
    failed_before: int = 0  # failed to start
    closed: bool = False  # finished or cancelled: no more events but none

    @property
    def exists(self) -> bool:
        return self.batch_id is not None

    def in_state(self, state: FileState) -> list[int]:
        return [m for m in self.order if self.files[m] is state]

    @property
    def running(self) -> list[int]:
        return self.in_state(FileState.running)

    @property
    def undispatched(self) -> list[int]:
        return [m for m in self.running if m not in self.dispatched]


initial_state = BatchState()


# --- commands (the orchestrator's inputs; built by handlers from requests and outcomes) ---


@dataclass(frozen=True)
class Start:
    batch_id: str
    kind: BatchKind
    max_concurrent: int
    force: bool
    requested_ids: list[int]
    to_download: list[CatalogEntry]
    already_downloaded: list[AlreadyDownloaded]
    failed_to_start: list[FileFailure]
    already_downloading: list[int]
    at: datetime


@dataclass(frozen=True)
class Finish:
    """A download job this batch waited for has ended."""

    message_id: int
    job_id: str
    status: OutcomeStatus
    at: datetime
    file_path: str | None = None
    relative_path: str | None = None
    size: int | None = None
    failure: Failure | None = None


@dataclass(frozen=True)
class MarkDispatched:
    message_id: int
    job_id: str
    attached: bool
    at: datetime


@dataclass(frozen=True)
class Cancel:
    at: datetime


@dataclass(frozen=True)
class Reconcile:
    """Grant free permits and finish if done (after a crash between two appends)."""

    at: datetime


Command = Start | Finish | MarkDispatched | Cancel | Reconcile


def job_id_for(batch_id: str, message_id: int) -> str:
    return f"{batch_id}:{message_id}"


# --- decide ------------------------------------------------------------------------------


def decide(cmd: Command, s: BatchState) -> list[BatchEvent]:
    match cmd:
        case Start() if not s.exists:
            started = BatchStarted(
                batch_id=cmd.batch_id,
                at=cmd.at,
                kind=cmd.kind,
                max_concurrent=cmd.max_concurrent,
                force=cmd.force,
                requested_ids=cmd.requested_ids,
                to_download=cmd.to_download,
                already_downloaded=cmd.already_downloaded,
                failed_to_start=cmd.failed_to_start,
                already_downloading=cmd.already_downloading,
            )
            return [started, *_grant_or_finish(evolve(s, started), cmd.at)]
        case Finish() if not s.closed and s.files.get(cmd.message_id) is FileState.running:
            ended = _file_ended(s, cmd)
            return [ended, *_grant_or_finish(evolve(s, ended), cmd.at)]
        case MarkDispatched() if (
            s.files.get(cmd.message_id) is FileState.running
            and cmd.message_id not in s.dispatched
        ):
            return [
                JobDispatched(
                    batch_id=s.batch_id,
                    at=cmd.at,
                    message_id=cmd.message_id,
                    job_id=cmd.job_id,
                    attached=cmd.attached,
                )
            ]
        case Cancel() if s.exists and not s.closed:
            stopped = [m for m in s.order if s.files[m] not in TERMINAL]
            return [BatchCancelled(batch_id=s.batch_id, at=cmd.at, stopped=stopped)]
        case Reconcile() if s.exists and not s.closed:
            return _grant_or_finish(s, cmd.at)
    return []


def _file_ended(s: BatchState, cmd: Finish) -> BatchEvent:
    assert s.batch_id is not None
    if cmd.status == OutcomeStatus.completed and cmd.file_path and cmd.relative_path:
        return FileCompleted(
            batch_id=s.batch_id,
            at=cmd.at,
            message_id=cmd.message_id,
            job_id=cmd.job_id,
            file_path=cmd.file_path,
            relative_path=cmd.relative_path,
            size=cmd.size or 0,
        )
    failure = cmd.failure or Failure.of(
        ErrorCode.cancelled if cmd.status == OutcomeStatus.cancelled else ErrorCode.internal,
        f"the download job ended as {cmd.status} without details",
    )
    return FileFailed(
        batch_id=s.batch_id,
        at=cmd.at,
        message_id=cmd.message_id,
        job_id=cmd.job_id,
        failure=failure,
    )


def _grant_or_finish(s: BatchState, at: datetime) -> list[BatchEvent]:
    """Grant permits to the next pending files up to `max_concurrent`; finish when done."""
    assert s.batch_id is not None
    free = s.max_concurrent - len(s.running)
    grants: list[BatchEvent] = [
        PermitGranted(batch_id=s.batch_id, at=at, message_id=m, job_id=job_id_for(s.batch_id, m))
        for m in s.in_state(FileState.pending)[: max(free, 0)]
    ]
    if grants or s.running or s.in_state(FileState.pending):
        return grants
    completed = s.completed_before + len(s.in_state(FileState.completed))
    failed = s.failed_before + len(s.in_state(FileState.failed))
    return [
        BatchFinished(
            batch_id=s.batch_id,
            at=at,
            overall_status="failed" if failed else "completed",
            completed=completed,
            failed=failed,
        )
    ]


# --- evolve ------------------------------------------------------------------------------


def _with_file(s: BatchState, m: int, state: FileState) -> BatchState:
    return replace(s, files=MappingProxyType({**s.files, m: state}))


def evolve(s: BatchState, e: BatchEvent) -> BatchState:
    match e:
        case BatchStarted():
            order = tuple(entry.message_id for entry in e.to_download)
            return BatchState(
                batch_id=e.batch_id,
                kind=e.kind,
                max_concurrent=e.max_concurrent,
                force=e.force,
                order=order,
                entries=MappingProxyType({x.message_id: x for x in e.to_download}),
                files=MappingProxyType(dict.fromkeys(order, FileState.pending)),
                completed_before=len(e.already_downloaded),
                failed_before=len(e.failed_to_start),
            )
        case PermitGranted():
            s = _with_file(s, e.message_id, FileState.running)
            return replace(s, jobs=MappingProxyType({**s.jobs, e.message_id: e.job_id}))
        case JobDispatched():
            return replace(
                s,
                dispatched=s.dispatched | {e.message_id},
                jobs=MappingProxyType({**s.jobs, e.message_id: e.job_id}),
            )
        case FileCompleted():
            return _with_file(s, e.message_id, FileState.completed)
        case FileFailed():
            return _with_file(s, e.message_id, FileState.failed)
        case BatchCancelled():
            files = {m: FileState.cancelled if m in e.stopped else st for m, st in s.files.items()}
            return replace(s, files=MappingProxyType(files), closed=True)
        case BatchFinished():
            return replace(s, closed=True)
    return s


def fold(events: list[BatchEvent], s: BatchState = initial_state) -> BatchState:
    for event in events:
        s = evolve(s, event)
    return s
