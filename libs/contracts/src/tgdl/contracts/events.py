"""Events of a batch's log (subject `Names.batch_events(batch_id)`): what happened, never
what should happen. Frozen and versioned (``v``; see `versioning`): the log is kept for
30 days, so every release reads the events older releases wrote. The ``type`` tag makes
the union self-describing on the wire. A log message holds what one decision appended
(`dump_events`, `parse_events`). These are stored facts, not HTTP bodies: nothing here
depends on the API models."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from tgdl.contracts.catalog import CatalogEntry
from tgdl.contracts.errors import Failure, FileFailure
from tgdl.contracts.status import BatchKind, Priority
from tgdl.contracts.versioning import Versioned, nest_failure


class _Event(Versioned):
    model_config = ConfigDict(frozen=True)

    v: Literal[1] = 1
    batch_id: str
    at: datetime


class AlreadyDownloaded(BaseModel):
    model_config = ConfigDict(frozen=True)

    message_id: int
    file_path: str
    relative_path: str
    size: int
    # Not on disk under its own name at the start, but the same Telegram file was, for
    # that message: linked to it then (as FileCompleted.same_file_as). Added with a
    # default, so older events read as they are.
    same_file_as: int | None = None


class BatchStarted(_Event):
    type: Literal["BatchStarted"] = "BatchStarted"
    kind: BatchKind
    max_concurrent: int
    force: bool
    requested_ids: list[int]  # after collapsing duplicates, in request order
    to_download: list[CatalogEntry]  # in request order (permits go largest first)
    already_downloaded: list[AlreadyDownloaded]
    failed_to_start: list[FileFailure]
    already_downloading: list[int] = []  # informational: leased by someone else at start
    # Where the batch's files go (tgdl.contracts.paths), fixed at its start; None in
    # batches started before templates existed: the default layout.
    name_template: str | None = None
    # The watch rule that started it. Added with a default, so older events read as they
    # are (no new version): they were all started by hand.
    rule_id: str | None = None
    priority: Priority = Priority.normal  # logs from before priorities existed: normal


class PermitGranted(_Event):
    """The batch gives one of its `max_concurrent` slots to this file."""

    type: Literal["PermitGranted"] = "PermitGranted"
    message_id: int
    job_id: str  # the job this batch publishes unless it attaches to a running one


class JobDispatched(_Event):
    """The permit's job is on the queue, or the batch attached to a running job."""

    type: Literal["JobDispatched"] = "JobDispatched"
    message_id: int
    job_id: str
    attached: bool


class FileCompleted(_Event):
    type: Literal["FileCompleted"] = "FileCompleted"
    message_id: int
    job_id: str
    file_path: str
    relative_path: str
    size: int
    # Not downloaded: the same Telegram file was, for that message; this one is a hard
    # link to it (or a copy where links are impossible). See DownloadOutcome.
    same_file_as: int | None = None
    link: Literal["hard_link", "copy"] | None = None


class FileFailed(_Event):
    # v2: the failure is one embedded `Failure` (v1 had flat error/detail/suggestion)
    UPCASTERS: ClassVar = {1: nest_failure}

    v: Literal[2] = 2
    type: Literal["FileFailed"] = "FileFailed"
    message_id: int
    job_id: str | None
    failure: Failure


class BatchCancelled(_Event):
    type: Literal["BatchCancelled"] = "BatchCancelled"
    stopped: list[int]  # files that were pending or running when the cancel arrived


class BatchPaused(_Event):
    """No permits until resumed; the files that held one gave it back (their .part files
    stay on disk)."""

    type: Literal["BatchPaused"] = "BatchPaused"
    stopped: list[int]  # files that held a permit when the pause arrived


class BatchResumed(_Event):
    """Permits again, up to `max_concurrent`; paused files continue from their .part."""

    type: Literal["BatchResumed"] = "BatchResumed"
    resumed: list[int]  # the files the pause had stopped


class ConcurrencyChanged(_Event):
    """From now on at most `max_concurrent` files hold a permit; running files keep theirs."""

    type: Literal["ConcurrencyChanged"] = "ConcurrencyChanged"
    max_concurrent: int
    previous: int


class PriorityChanged(_Event):
    """From now on the batch's jobs go at `priority` under the global cap; those still
    waiting for a downloader move with it, running ones go on."""

    type: Literal["PriorityChanged"] = "PriorityChanged"
    priority: Priority
    previous: Priority


class BatchFinished(_Event):
    type: Literal["BatchFinished"] = "BatchFinished"
    overall_status: Literal["completed", "failed"]
    completed: int
    failed: int


class BatchPruned(_Event):
    """`tgdl prune` purged this finished batch's log; the marker is all that is left of
    it, so the projector (the read model's one writer) removes its rows too."""

    type: Literal["BatchPruned"] = "BatchPruned"


BatchEvent = Annotated[
    BatchStarted
    | PermitGranted
    | JobDispatched
    | FileCompleted
    | FileFailed
    | BatchCancelled
    | BatchPaused
    | BatchResumed
    | ConcurrencyChanged
    | PriorityChanged
    | BatchFinished
    | BatchPruned,
    Field(discriminator="type"),
]
batch_event_adapter: TypeAdapter[BatchEvent] = TypeAdapter(BatchEvent)


decision_adapter: TypeAdapter[list[BatchEvent]] = TypeAdapter(list[BatchEvent])

# The header naming the event types a message holds, in order, comma-separated: a
# reader can pick messages (e.g. a batch's end) without parsing bodies.
EVENT_TYPES_HEADER = "Tgdl-Event-Type"


def parse_event(data: bytes | str) -> BatchEvent:
    return batch_event_adapter.validate_json(data)


def dump_event(event: BatchEvent) -> bytes:
    return event.model_dump_json().encode()


def parse_events(data: bytes | str) -> list[BatchEvent]:
    """The events of one message of a batch's log, in order. A message holds what one
    decision appended, as a JSON array; releases before that wrote one event per
    message, as a bare object, which reads as a decision of one event."""
    text = data.decode() if isinstance(data, bytes) else data
    if text.lstrip().startswith("["):
        return decision_adapter.validate_json(text)
    return [batch_event_adapter.validate_json(text)]


def dump_events(events: Sequence[BatchEvent]) -> bytes:
    """One decision's events as one message body (see `parse_events`)."""
    return decision_adapter.dump_json(list(events))


def event_types(events: Sequence[BatchEvent]) -> str:
    """The `EVENT_TYPES_HEADER` value for a message holding `events`."""
    return ",".join(e.type for e in events)


def types_in(headers: Mapping[str, str] | None) -> list[str]:
    """The event types a message's headers say it holds."""
    return (headers or {}).get(EVENT_TYPES_HEADER, "").split(",")
