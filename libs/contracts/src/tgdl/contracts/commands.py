"""Requests any NATS client (the gateway among them) may send to the orchestrator, and
its answers.

They travel as request/reply on the subjects in `subjects.Names`; the reply is a
`CommandReply` holding a domain result or a `Rejection` with its reason. Nothing here is
HTTP: the gateway alone chooses status codes and wording.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator

from tgdl.contracts.errors import FileFailure
from tgdl.contracts.paths import NameTemplate
from tgdl.contracts.status import BatchKind, Priority

BATCH_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"  # batch ids go into NATS subjects
MAX_MESSAGE_ID = 2**63 - 1  # PostgreSQL bigint: a larger id is refused, not failed on


class BatchRequest(BaseModel):
    """What a caller chooses when starting a batch: the rules of these fields live here
    (the HTTP body and the command share them). How many ids one batch may hold is a
    setting (`max_batch_ids`) that the orchestrator checks (`too_many_files`)."""

    model_config = ConfigDict(frozen=True)

    # Strict: JSON's true is not message 1, nor "3" a number (a client's bug, said so).
    message_ids: list[StrictInt] = Field(min_length=1)
    force: StrictBool = False
    max_concurrent: StrictInt = Field(default=3, ge=1, le=5)
    # Under the global cap, higher goes first across batches (low is never starved).
    priority: Priority = Priority.normal
    # Where this batch's files go (see tgdl.contracts.paths); None: the service's
    # TGDL_NAME_TEMPLATE. Fixed for the batch when it starts.
    name_template: str | None = Field(default=None, max_length=300)

    @field_validator("name_template")
    @classmethod
    def _usable_template(cls, text: str | None) -> str | None:
        if text is not None:
            NameTemplate.parse(text)  # a TemplateError says what is wrong with it
        return text

    @field_validator("message_ids")
    @classmethod
    def _positive_unique(cls, ids: list[int]) -> list[int]:
        if any(i <= 0 for i in ids):
            raise ValueError("message ids are positive integers")
        if any(i > MAX_MESSAGE_ID for i in ids):
            raise ValueError(f"message ids are at most {MAX_MESSAGE_ID}")
        return list(dict.fromkeys(ids))  # duplicates collapse, first occurrence keeps order


class StartBatch(BatchRequest):
    """Download these messages' media as one batch."""

    kind: BatchKind = BatchKind.batch
    # The caller's API token may read only these chats (chat_key()s), on top of the
    # allow-list; None: no such limit. Messages of other chats are access_denied.
    chats: list[str] | None = None
    # The caller's own batch id (a watch rule's, chosen before sending): sending the same
    # start again answers with the batch already started under it. None: a new id.
    batch_id: str | None = Field(default=None, pattern=BATCH_ID_PATTERN)
    rule_id: str | None = Field(default=None, max_length=64)  # the watch rule starting it


class CancelBatch(BaseModel):
    model_config = ConfigDict(frozen=True)

    batch_id: str = Field(pattern=BATCH_ID_PATTERN)


class CancelSingle(BaseModel):
    """Cancel the single-file requests of one message (batches that want it keep it)."""

    model_config = ConfigDict(frozen=True)

    message_id: int = Field(ge=1, le=MAX_MESSAGE_ID)


class PauseBatch(BaseModel):
    """Stop granting permits; running files stop and keep their .part files."""

    model_config = ConfigDict(frozen=True)

    batch_id: str = Field(pattern=BATCH_ID_PATTERN)


class ResumeBatch(BaseModel):
    """Grant permits again; paused files continue from the bytes on disk."""

    model_config = ConfigDict(frozen=True)

    batch_id: str = Field(pattern=BATCH_ID_PATTERN)


class SetConcurrency(BaseModel):
    """Change `max_concurrent` of a batch under way; running files are never stopped."""

    model_config = ConfigDict(frozen=True)

    batch_id: str = Field(pattern=BATCH_ID_PATTERN)
    max_concurrent: int = Field(ge=1, le=5)


class SetPriority(BaseModel):
    """Change the priority of a batch under way; its jobs not yet started move with it."""

    model_config = ConfigDict(frozen=True)

    batch_id: str = Field(pattern=BATCH_ID_PATTERN)
    priority: Priority


# --- answers -------------------------------------------------------------------------------


class BatchAccepted(BaseModel):
    """A batch exists; how its files were sorted at the start."""

    type: Literal["BatchAccepted"] = "BatchAccepted"
    batch_id: str
    requested_ids: list[int]  # duplicates collapsed, request order
    started: list[int]  # will be downloaded (including those joining a running download)
    already_downloaded: list[int]
    already_downloading: list[int]  # of `started`: another request's download is joined
    failed_to_start: list[FileFailure]


class BatchCancelOutcome(BaseModel):
    type: Literal["BatchCancelOutcome"] = "BatchCancelOutcome"
    batch_id: str
    total_files: int
    stopped: list[int]  # files that were pending or running
    already_finished: bool  # nothing to cancel: the batch had ended before


class SingleCancelOutcome(BaseModel):
    type: Literal["SingleCancelOutcome"] = "SingleCancelOutcome"
    message_id: int
    cancelled: list[str]  # the single-file requests (batch ids) cancelled; [] if none ran


class BatchPauseOutcome(BaseModel):
    type: Literal["BatchPauseOutcome"] = "BatchPauseOutcome"
    batch_id: str
    total_files: int
    stopped: list[int]  # files that were running and gave their permit back
    already_paused: bool = False
    already_finished: bool = False  # nothing to pause: the batch had ended


class BatchResumeOutcome(BaseModel):
    type: Literal["BatchResumeOutcome"] = "BatchResumeOutcome"
    batch_id: str
    total_files: int
    resumed: list[int]  # files the pause had stopped
    granted: list[int]  # files that got a permit right away
    not_paused: bool = False  # nothing to resume: the batch was not paused
    already_finished: bool = False


class ConcurrencyOutcome(BaseModel):
    type: Literal["ConcurrencyOutcome"] = "ConcurrencyOutcome"
    batch_id: str
    max_concurrent: int  # in force now
    previous: int
    granted: list[int]  # files that got a permit at once (the limit was raised)
    already_finished: bool = False  # a finished batch keeps its last value


class PriorityOutcome(BaseModel):
    type: Literal["PriorityOutcome"] = "PriorityOutcome"
    batch_id: str
    priority: Priority  # in force now
    previous: Priority
    already_finished: bool = False  # a finished batch keeps its last value


class RejectReason(StrEnum):
    invalid_command = "invalid_command"  # the body is not a valid command
    too_many_files = "too_many_files"  # more ids than `max_batch_ids`
    batch_not_found = "batch_not_found"
    storage_full = "storage_full"  # NATS keeps no more batch logs: free space or raise limits
    internal = "internal_error"  # the orchestrator failed; retrying may help


class Rejection(BaseModel):
    reason: RejectReason
    detail: str


CommandResult = Annotated[
    BatchAccepted | BatchCancelOutcome | SingleCancelOutcome | BatchPauseOutcome
    | BatchResumeOutcome | ConcurrencyOutcome | PriorityOutcome,
    Field(discriminator="type"),
]


class CommandReply(BaseModel):
    ok: CommandResult | None = None
    rejected: Rejection | None = None
