"""HTTP request and response bodies. Field names follow the original requirement exactly;
fields beyond it are additions that old clients can ignore."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator

from tgdl.contracts.commands import BatchRequest, StartBatch
from tgdl.contracts.errors import FileFailure
from tgdl.contracts.status import BatchKind, FileStatus, OverallStatus, Priority


class BatchDownloadRequest(BatchRequest):
    """The body of POST /api/media/batch-download."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def command(self) -> StartBatch:
        return StartBatch(**self.model_dump())


# An item of `failed_to_start`: which message, and why.
StartFailure = FileFailure


class BatchDownloadResponse(BaseModel):
    batch_id: str
    # "started": files are downloading; "completed": every file was already there;
    # "failed": nothing downloads and some file could not start (see failed_to_start):
    # the status the batch ends with
    status: Literal["started", "completed", "failed"]
    message: str
    total_files: int
    started_downloads: list[int]
    already_downloaded: list[int]
    failed_to_start: list[StartFailure]
    # Of started_downloads, the ids another request was already downloading: this batch
    # waits for that download instead of starting a second one.
    already_downloading: list[int] = []


class FileStatusBody(BaseModel):
    message_id: int
    status: FileStatus
    progress: int = 0
    file_path: str | None = None
    download_url: str | None = None
    downloaded_size: int | None = None
    total_size: int | None = None
    download_speed: int | None = None  # bytes per second
    estimated_time_remaining: int | None = None  # seconds
    wait_seconds: int | None = None  # status "waiting": Telegram asked to hold off this long
    already_downloaded: bool | None = None
    # Why it was already downloaded: "file_exists" (this message's file was on disk when
    # the batch started) or "same_file" (the same Telegram file, forwarded, was downloaded
    # for message `same_file_as`; this one is a hard link to it, or a copy)
    reason: Literal["file_exists", "same_file"] | None = None
    same_file_as: int | None = None
    # completed: true if every part matched Telegram's own hashes of the file, false if
    # Telegram offered none for it (photos); absent when not known
    hash_verified: bool | None = None
    error: str | None = None
    detail: str | None = None
    suggestion: str | None = None


class BatchStatusResponse(BaseModel):
    batch_id: str
    total_files: int
    completed: int
    downloading: int
    failed: int
    pending: int
    cancelled: int = 0
    paused: int = 0  # stopped by a pause of the batch (its bytes wait on disk)
    overall_status: OverallStatus
    finished: bool = False
    summary: str = ""
    max_concurrent: int | None = None
    priority: Priority | None = None
    files: list[FileStatusBody]


class BatchCancelResponse(BaseModel):
    status: Literal["cancelled", "already_finished"]
    message: str
    batch_id: str
    cancelled_downloads: int
    total_files: int


class BatchPauseResponse(BaseModel):
    # "paused": running files stopped (their .part files stay); "already_paused";
    # "already_finished": the batch had ended, nothing to pause
    status: Literal["paused", "already_paused", "already_finished"]
    message: str
    batch_id: str
    paused_downloads: int  # files that were downloading (or queued) and stopped
    total_files: int


class BatchResumeResponse(BaseModel):
    # "resumed": permits again, paused files continue from their bytes on disk;
    # "not_paused": the batch was running anyway; "already_finished"
    status: Literal["resumed", "not_paused", "already_finished"]
    message: str
    batch_id: str
    resumed_downloads: int  # files that got a permit right away
    total_files: int


class BatchSettingsRequest(BaseModel):
    """The body of PATCH /api/media/batch/{batch_id}: what may change under way."""

    model_config = ConfigDict(extra="forbid")

    max_concurrent: StrictInt | None = Field(default=None, ge=1, le=5)
    priority: Priority | None = None

    @model_validator(mode="after")
    def _something(self) -> BatchSettingsRequest:
        if self.max_concurrent is None and self.priority is None:
            raise ValueError("give max_concurrent (1-5), priority (high, normal, low) or both")
        return self


class BatchSettingsResponse(BaseModel):
    # "changed": the next permits follow the new values (running files go on);
    # "unchanged": they already were; "already_finished": a finished batch keeps them
    status: Literal["changed", "unchanged", "already_finished"]
    message: str
    batch_id: str
    max_concurrent: int
    previous_max_concurrent: int
    started_downloads: list[int]  # granted at once because the limit was raised
    priority: Priority | None = None
    previous_priority: Priority | None = None


class SingleDownloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    force: StrictBool = False
    priority: Priority = Priority.normal


class SingleDownloadResponse(BaseModel):
    message_id: int
    download_id: str  # the one-file batch that tracks this request
    status: Literal["started", "already_downloaded", "already_downloading", "failed"]
    message: str
    file_path: str | None = None
    download_url: str | None = None
    error: StartFailure | None = None


class SinglePauseResponse(BaseModel):
    message_id: int
    # "paused"/"resumed": the single-file download of the message stopped (keeping its
    # .part) or goes on; "not_downloading": no single-file download of it is under way;
    # otherwise what the batch routes answer for its one-file batch
    status: Literal["paused", "already_paused", "resumed", "not_paused", "not_downloading"]
    message: str
    download_id: str | None = None


class SingleCancelResponse(BaseModel):
    message_id: int
    status: Literal["cancelled", "not_downloading"]
    message: str


class MessageItem(BaseModel):
    message_id: int
    chat: str
    telegram_message_id: int
    media_type: str | None
    file_name: str | None
    mime_type: str | None
    size: int | None
    download_state: Literal["not_downloaded", "queued", "downloading", "waiting", "downloaded",
                            "failed", "cancelled", "no_media", "paused"]
    download_url: str | None = None
    date: datetime | None = None  # when the message was posted
    caption: str | None = None


class ResolvedLink(BaseModel):
    """A message link as given, and the catalog's message id for it, or why there is none
    (`error`: not_a_message_link, message_not_found or access_denied)."""

    link: str
    message_id: int | None = None
    chat: str | None = None  # as the link names it
    telegram_message_id: int | None = None
    # The message is one of an album, and the link (without ?single) names all of it:
    # the album's message ids in the chat's order, the linked one among them.
    album: list[int] | None = None
    error: str | None = None
    detail: str | None = None
    suggestion: str | None = None


class LinkResolution(BaseModel):
    items: list[ResolvedLink]  # in the order given


class MessagePage(BaseModel):
    items: list[MessageItem]
    total: int  # messages matching the filters
    offset: int
    limit: int
    # How many ids one batch may hold, so a client can "select all matching" up to it.
    batch_limit: int | None = None


class BatchSummary(BaseModel):
    """One batch of the batch list: its counts and overall progress, without the files."""

    batch_id: str
    kind: BatchKind
    created_at: datetime
    finished_at: datetime | None = None
    total_files: int
    completed: int
    downloading: int
    failed: int
    pending: int
    cancelled: int = 0
    paused: int = 0
    overall_status: OverallStatus
    finished: bool
    summary: str
    max_concurrent: int
    force: bool
    rule_id: str | None = None  # the watch rule that started it (None: started by hand)
    priority: Priority = Priority.normal
    progress: int  # percent of the batch's files done, by bytes where known
    downloaded_size: int  # bytes on disk of completed and running files
    total_size: int | None = None  # bytes of every file, None while some size is unknown
    download_speed: int = 0  # bytes per second of the running files together


class BatchPage(BaseModel):
    items: list[BatchSummary]  # newest first
    total: int
    offset: int
    limit: int


class ErrorBody(BaseModel):
    """Every 4xx/5xx body: what was wrong, in words and as a code."""

    error: str
    detail: str | list | dict
    suggestion: str | None = None
