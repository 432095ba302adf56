"""Why something could not be downloaded, with what the user can do about it.

Every failure the service reports carries one of these codes, a human detail and a
suggestion, so clients can branch on ``error`` and people can read the rest.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict


class ErrorCode(StrEnum):
    message_not_found = "message_not_found"
    no_media = "no_media"
    access_denied = "access_denied"
    message_deleted = "message_deleted"
    size_mismatch = "size_mismatch"
    network = "network_error"
    flood_wait_too_long = "flood_wait_too_long"
    storage = "storage_error"
    retries_exhausted = "retries_exhausted"
    worker_lost = "worker_lost"
    cancelled = "cancelled"
    internal = "internal_error"


SUGGESTIONS: dict[ErrorCode, str] = {
    ErrorCode.message_not_found: (
        "Check the id with GET /api/messages; run `tgdl sync <chat>` if the message is new."
    ),
    ErrorCode.no_media: "This message has no photo, video, document or audio to download.",
    ErrorCode.access_denied: (
        "The account cannot read this chat (left, banned, or private). Join the chat or "
        "ask an admin, then retry."
    ),
    ErrorCode.message_deleted: (
        "The message was deleted in Telegram; it cannot be downloaded any more."
    ),
    ErrorCode.size_mismatch: (
        "Telegram sent fewer or more bytes than announced; retry the download with force=true."
    ),
    ErrorCode.network: "Telegram could not be reached reliably; retry later.",
    ErrorCode.flood_wait_too_long: (
        "Telegram asked the account to wait longer than the configured limit; retry later."
    ),
    ErrorCode.storage: "Check free disk space and permissions of the media folder, then retry.",
    ErrorCode.retries_exhausted: "The download kept failing; retry later or check the logs.",
    ErrorCode.worker_lost: (
        "The downloader handling this file stopped repeatedly; check the downloader logs."
    ),
    ErrorCode.cancelled: "The download was cancelled; start it again to resume.",
    ErrorCode.internal: "Unexpected error; check the service logs.",
}


class Failure(BaseModel):
    """A classified failure: machine-readable code, human detail, what to do. Embedded
    as a field where something failed (events, outcomes), or extended with the message
    it concerns (`FileFailure`)."""

    model_config = ConfigDict(frozen=True)

    error: ErrorCode
    detail: str
    suggestion: str

    @classmethod
    def of(cls, error: ErrorCode, detail: str) -> Failure:
        return cls(error=error, detail=detail, suggestion=SUGGESTIONS[error])

    @property
    def failure(self) -> Failure:
        """The bare failure (without whatever a subclass adds)."""
        return Failure(error=self.error, detail=self.detail, suggestion=self.suggestion)


class _MessageRef(BaseModel):
    message_id: int


class FileFailure(Failure, _MessageRef):  # message_id comes first on the wire
    """Why one message could not be downloaded (an item of ``failed_to_start``)."""

    @classmethod
    def of_message(cls, message_id: int, error: ErrorCode, detail: str) -> FileFailure:
        return cls(message_id=message_id, **Failure.of(error, detail).model_dump())

    @classmethod
    def for_message(cls, message_id: int, failure: Failure) -> FileFailure:
        return cls(message_id=message_id, **failure.failure.model_dump())
