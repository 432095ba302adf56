"""Requests any NATS client (the gateway among them) may send to the orchestrator.

They travel as request/reply on the subjects in `subjects.Names`; the reply is a
`CommandReply` wrapping the HTTP-shaped body or a rejection.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tgdl.contracts.api import (
    BatchCancelResponse,
    BatchDownloadResponse,
    SingleCancelResponse,
)

BatchKind = Literal["batch", "single"]


class StartBatch(BaseModel):
    model_config = ConfigDict(frozen=True)

    message_ids: list[int] = Field(min_length=1)
    force: bool = False
    max_concurrent: int = Field(default=3, ge=1, le=5)
    kind: BatchKind = "batch"


class CancelBatch(BaseModel):
    model_config = ConfigDict(frozen=True)

    batch_id: str


class CancelSingle(BaseModel):
    """Cancel the single-file requests of one message (batches that want it keep it)."""

    model_config = ConfigDict(frozen=True)

    message_id: int


class Rejection(BaseModel):
    status: int  # the HTTP status a gateway should answer with
    error: str
    detail: str
    suggestion: str | None = None


class CommandReply(BaseModel):
    ok: BatchDownloadResponse | BatchCancelResponse | SingleCancelResponse | None = None
    rejected: Rejection | None = None
