"""The batch as a decider: ``decide(command, state) -> events``, ``evolve(state, event)``.

Pure: no I/O, no clock (commands carry the time). Every rule of a batch lives here:
permits never exceed ``max_concurrent`` and go to the largest files first, a file is
granted once, cancel stops what is pending or running and keeps what completed, and the
batch finishes exactly once. A file whose Telegram file another message's copy holds
whole is done at the start, linked to that copy, unless the batch forces
(`same_file_links`). A paused batch grants nothing: its running files give their permits
back (and keep their bytes on disk) until it is resumed, except one whose job had the
whole file first (it is completed); a new `max_concurrent` applies to the next grants.
A new priority applies to the batch's jobs that have not started (where they wait, and in
what order, is the admission's business: `tgdl.bus.admission`).
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
from tgdl.contracts.status import BatchKind, OutcomeStatus, Priority


class FileState(StrEnum):
    pending = "pending"  # waiting for a permit (or for the resume of a paused batch)
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
    priority: Priority = Priority.normal
    order: tuple[int, ...] = ()  # files to download, in grant order
    entries: Mapping[int, CatalogEntry] = field(default_factory=lambda: MappingProxyType({}))
    files: Mapping[int, FileState] = field(default_factory=lambda: MappingProxyType({}))
    jobs: Mapping[int, str] = field(default_factory=lambda: MappingProxyType({}))
    dispatched: frozenset[int] = frozenset()
    completed_before: int = 0  # already downloaded at start
    failed_before: int = 0  # failed to start
    closed: bool = False  # finished or cancelled: no more events but none
    paused: bool = False  # no grants until resumed
    paused_files: tuple[int, ...] = ()  # the files the pause stopped (they left their leases)
    # permits granted per file: a file paused and granted again gets a new job id, so the
    # stopped job's outcome and the new job's never share an id (nor a Nats-Msg-Id)
    grants: Mapping[int, int] = field(default_factory=lambda: MappingProxyType({}))
    name_template: str | None = None  # where its files go, fixed at the start

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

    def granted_job(self, message_id: int) -> str | None:
        """The job id of the file's latest permit (None: never granted)."""
        n = self.grants.get(message_id, 0)
        return job_id_for(self.batch_id, message_id, n) if n and self.batch_id else None


initial_state = BatchState()


# --- commands (the orchestrator's inputs; built by handlers from requests and outcomes) ---


@dataclass(frozen=True)
class CompleteCopy:
    """A fact for `Start`: the message's Telegram file is whole on disk at `source` (under
    the media root), as message `same_file_as`'s file (`tgdl.bus.samefile.complete_copy`);
    a link to it gives the message its own file at `file_path` / `relative_path`."""

    same_file_as: int
    source: str
    size: int
    file_path: str
    relative_path: str


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
    name_template: str | None = None
    rule_id: str | None = None  # the watch rule that started it
    priority: Priority = Priority.normal
    # Of to_download: messages whose Telegram file another message's copy holds (the
    # handler links those `same_file_links` picks before it appends the start).
    copies: Mapping[int, CompleteCopy] = field(
        default_factory=lambda: MappingProxyType({}))


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
    same_file_as: int | None = None  # linked to that message's copy of the same file
    link: str | None = None


@dataclass(frozen=True)
class MarkDispatched:
    message_id: int
    job_id: str
    attached: bool
    at: datetime
    for_job: str | None = None  # the granted job it dispatched; a stale grant's is ignored


@dataclass(frozen=True)
class Cancel:
    at: datetime


@dataclass(frozen=True)
class Pause:
    at: datetime


@dataclass(frozen=True)
class Resume:
    at: datetime


@dataclass(frozen=True)
class SetMaxConcurrent:
    max_concurrent: int
    at: datetime


@dataclass(frozen=True)
class SetPriority:
    priority: Priority
    at: datetime


@dataclass(frozen=True)
class Reconcile:
    """Grant free permits and finish if done (after a crash between two appends)."""

    at: datetime


Command = (Start | Finish | MarkDispatched | Cancel | Pause | Resume | SetMaxConcurrent
           | SetPriority | Reconcile)


def job_id_for(batch_id: str, message_id: int, grant: int) -> str:
    """The job of a file's `grant`-th permit (more than one only after pauses)."""
    return f"{batch_id}:{message_id}" if grant <= 1 else f"{batch_id}:{message_id}:{grant}"


def same_file_links(cmd: Start) -> dict[int, CompleteCopy]:
    """The files of a start that need no download: another message's whole copy of the
    same Telegram file gives them theirs. Not with `force` (fresh bytes), nor for a file
    some job downloads right now (the batch joins that job, which links it itself)."""
    if cmd.force:
        return {}
    busy = set(cmd.already_downloading)
    return {e.message_id: cmd.copies[e.message_id] for e in cmd.to_download
            if e.message_id in cmd.copies and e.message_id not in busy}


def _already_downloaded(cmd: Start, linked: Mapping[int, CompleteCopy]
                        ) -> list[AlreadyDownloaded]:
    done = [*cmd.already_downloaded, *(
        AlreadyDownloaded(message_id=m, file_path=c.file_path, relative_path=c.relative_path,
                          size=c.size, same_file_as=c.same_file_as)
        for m, c in linked.items())]
    position = {m: i for i, m in enumerate(cmd.requested_ids)}
    return sorted(done, key=lambda d: position.get(d.message_id, len(position)))


# --- decide ------------------------------------------------------------------------------


def decide(cmd: Command, s: BatchState) -> list[BatchEvent]:
    match cmd:
        case Start() if not s.exists:
            linked = same_file_links(cmd)
            started = BatchStarted(
                batch_id=cmd.batch_id,
                at=cmd.at,
                kind=cmd.kind,
                max_concurrent=cmd.max_concurrent,
                force=cmd.force,
                requested_ids=cmd.requested_ids,
                to_download=[e for e in cmd.to_download if e.message_id not in linked],
                already_downloaded=_already_downloaded(cmd, linked),
                failed_to_start=cmd.failed_to_start,
                already_downloading=cmd.already_downloading,
                name_template=cmd.name_template,
                rule_id=cmd.rule_id,
                priority=cmd.priority,
            )
            return [started, *_grant_or_finish(evolve(s, started), cmd.at)]
        case Finish() if (
            not s.closed and s.files.get(cmd.message_id) is FileState.running
            and not _stale(s, cmd)
        ):
            ended = _file_ended(s, cmd)
            return [ended, *_grant_or_finish(evolve(s, ended), cmd.at)]
        case Finish() if (
            cmd.message_id in s.paused_files and cmd.status == OutcomeStatus.completed
            and cmd.job_id == s.jobs.get(cmd.message_id)
        ):
            # The job the pause stopped had the whole file first: completed, not paused
            # (nothing is granted while paused; the resume has one file fewer to do).
            return [_file_ended(s, cmd)]
        case MarkDispatched() if (
            s.files.get(cmd.message_id) is FileState.running
            and cmd.message_id not in s.dispatched
            and cmd.for_job in (None, s.granted_job(cmd.message_id))
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
        case Pause() if s.exists and not s.closed and not s.paused:
            return [BatchPaused(batch_id=s.batch_id, at=cmd.at, stopped=s.running)]
        case Resume() if s.exists and not s.closed and s.paused:
            resumed = BatchResumed(batch_id=s.batch_id, at=cmd.at, resumed=list(s.paused_files))
            return [resumed, *_grant_or_finish(evolve(s, resumed), cmd.at)]
        case SetMaxConcurrent() if (
            s.exists and not s.closed and cmd.max_concurrent != s.max_concurrent
        ):
            changed = ConcurrencyChanged(batch_id=s.batch_id, at=cmd.at,
                                         max_concurrent=cmd.max_concurrent,
                                         previous=s.max_concurrent)
            return [changed, *_grant_or_finish(evolve(s, changed), cmd.at)]
        case SetPriority() if s.exists and not s.closed and cmd.priority != s.priority:
            # no grant changes: the permits are the batch's own, the priority orders its
            # jobs against other batches' (a paused batch's next jobs will follow it)
            return [PriorityChanged(batch_id=s.batch_id, at=cmd.at, priority=cmd.priority,
                                    previous=s.priority)]
        case Reconcile() if s.exists and not s.closed:
            return _grant_or_finish(s, cmd.at)
    return []


def _stale(s: BatchState, cmd: Finish) -> bool:
    """The outcome of a job the file no longer follows: one stopped by a pause, ending
    after the resume dispatched the file again (once dispatched, `jobs` names the job)."""
    return cmd.message_id in s.dispatched and cmd.job_id != s.jobs.get(cmd.message_id)


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
            same_file_as=cmd.same_file_as,
            link=cmd.link,
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


def largest_first(s: BatchState, pending: list[int]) -> list[int]:
    """The order permits go in: the largest files first (request order among equal sizes,
    unknown sizes last). The batch ends when its last file does, and a file runs on one
    downloader's connections: the small files left for the end keep every connection
    busy until then, where a large file granted last would run on its own."""
    return sorted(pending, key=lambda m: -(s.entries[m].size or 0))


def _grant_or_finish(s: BatchState, at: datetime) -> list[BatchEvent]:
    """Grant permits to the next pending files up to `max_concurrent`; finish when done."""
    assert s.batch_id is not None
    if s.paused:
        return []  # nothing is granted, and nothing finishes, until the resume
    free = s.max_concurrent - len(s.running)  # below zero after a lower limit: none
    grants: list[BatchEvent] = [
        PermitGranted(batch_id=s.batch_id, at=at, message_id=m,
                      job_id=job_id_for(s.batch_id, m, s.grants.get(m, 0) + 1))
        for m in largest_first(s, s.in_state(FileState.pending))[: max(free, 0)]
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
                priority=e.priority,
                order=order,
                entries=MappingProxyType({x.message_id: x for x in e.to_download}),
                files=MappingProxyType(dict.fromkeys(order, FileState.pending)),
                completed_before=len(e.already_downloaded),
                failed_before=len(e.failed_to_start),
                name_template=e.name_template,
            )
        case PermitGranted():
            s = _with_file(s, e.message_id, FileState.running)
            grants = {**s.grants, e.message_id: s.grants.get(e.message_id, 0) + 1}
            return replace(s, jobs=MappingProxyType({**s.jobs, e.message_id: e.job_id}),
                           grants=MappingProxyType(grants))
        case JobDispatched():
            return replace(
                s,
                dispatched=s.dispatched | {e.message_id},
                jobs=MappingProxyType({**s.jobs, e.message_id: e.job_id}),
            )
        case FileCompleted():
            s = _with_file(s, e.message_id, FileState.completed)
            return replace(s, paused_files=tuple(m for m in s.paused_files if m != e.message_id))
        case FileFailed():
            return _with_file(s, e.message_id, FileState.failed)
        case BatchCancelled():
            files = {m: FileState.cancelled if m in e.stopped else st for m, st in s.files.items()}
            return replace(s, files=MappingProxyType(files), closed=True)
        case BatchPaused(stopped=stopped):
            files = {m: FileState.pending if m in stopped else st for m, st in s.files.items()}
            return replace(s, files=MappingProxyType(files), paused=True,
                           paused_files=tuple(stopped),
                           dispatched=s.dispatched - set(stopped))
        case BatchResumed():
            return replace(s, paused=False, paused_files=())
        case ConcurrencyChanged(max_concurrent=n):
            return replace(s, max_concurrent=n)
        case PriorityChanged(priority=p):
            return replace(s, priority=p)
        case BatchFinished():
            return replace(s, closed=True)
        case BatchPruned():
            return initial_state  # forgotten: as if it never existed
    return s


def fold(events: list[BatchEvent], s: BatchState = initial_state) -> BatchState:
    for event in events:
        s = evolve(s, event)
    return s
