"""The single-file API (older than batches, kept working): one message's download is a
one-file batch of kind "single", so it shares the queue and the one-download-per-message
rule with every batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, Request
from fastapi.responses import JSONResponse, Response

from tgdl.contracts.api import (
    SingleCancelResponse,
    SingleDownloadRequest,
    SingleDownloadResponse,
    SinglePauseResponse,
)
from tgdl.contracts.commands import (
    MAX_MESSAGE_ID,
    BatchPauseOutcome,
    BatchResumeOutcome,
    CancelSingle,
    PauseBatch,
    ResumeBatch,
    SingleCancelOutcome,
    StartBatch,
)
from tgdl.contracts.errors import ErrorCode
from tgdl.contracts.status import BatchKind, Priority
from tgdl.db import readmodel
from tgdl.gateway.batches import limited, start
from tgdl.gateway.errors import ApiError, read_model_behind
from tgdl.gateway.services import Services, caller_chats, services

router = APIRouter(prefix="/api/media", tags=["single file"])

MessageId = Annotated[int, Path(ge=1, le=MAX_MESSAGE_ID,
                                description="the message id used across the API")]
Svc = Annotated[Services, Depends(services)]

# How a refused start is answered; anything else that prevents a start is a 422.
FAILED_START_STATUS = {
    ErrorCode.message_not_found: 404,
    ErrorCode.message_deleted: 404,
    ErrorCode.access_denied: 403,
    ErrorCode.no_media: 422,
    ErrorCode.network: 503,
    ErrorCode.internal: 500,
}


@router.post("/download/{message_id}", response_model=SingleDownloadResponse,
             response_model_exclude_none=True)
async def download(message_id: MessageId, svc: Svc, request: Request,
                   body: Annotated[SingleDownloadRequest | None, Body()] = None,
                   ) -> SingleDownloadResponse:
    force = body.force if body else False
    priority = body.priority if body else Priority.normal
    batch = await start(svc, limited(request, StartBatch(
        kind=BatchKind.single, message_ids=[message_id], max_concurrent=1, force=force,
        priority=priority)))
    if batch.failed_to_start:
        failure = batch.failed_to_start[0]
        # An ErrorBody like every error, plus the fields of the single-file answer.
        raise ApiError(FAILED_START_STATUS.get(failure.error, 422), failure.error.value,
                       failure.detail, failure.suggestion,
                       extra={"message_id": message_id, "download_id": batch.batch_id,
                              "status": "failed"})
    if message_id in batch.already_downloaded:
        status = await readmodel.batch_status(svc.pool, batch.batch_id)
        done = status.files[0] if status and status.files else None
        return SingleDownloadResponse(
            message_id=message_id, download_id=batch.batch_id, status="already_downloaded",
            message="Already downloaded; pass force=true to download it again",
            file_path=done.file_path if done else None,
            download_url=svc.tokens.sign(done.download_url)
            if done and done.download_url else None,
        )
    if message_id in batch.already_downloading:
        return SingleDownloadResponse(
            message_id=message_id, download_id=batch.batch_id, status="already_downloading",
            message="Already being downloaded; this request follows that download")
    return SingleDownloadResponse(message_id=message_id, download_id=batch.batch_id,
                                  status="started", message="Download started")


@router.get("/status/{message_id}", response_model=readmodel.MessageDownloadStatus)
async def status(message_id: MessageId, svc: Svc, request: Request) -> Response:
    found = await readmodel.message_status(svc.pool, message_id)
    if found is None or not await svc.message_visible(request, message_id):
        if (stale := svc.freshness.reason()) is not None:  # it may have been meanwhile
            raise read_model_behind(f"message {message_id} not in the read model", stale)
        raise ApiError(404, "not_requested", f"message {message_id} was never requested",
                       f"Start it with POST /api/media/download/{message_id}.")
    body = {**readmodel.file_body(found), "download_id": found.download_id}
    if (stale := svc.freshness.reason()) is not None:
        body |= {"stale": True, "stale_reason": stale}
    return Response(await svc.view(await caller_chats(request), JSONResponse(body).body),
                    media_type="application/json")


@router.post("/cancel/{message_id}", response_model=SingleCancelResponse)
async def cancel(message_id: MessageId, svc: Svc, request: Request) -> SingleCancelResponse:
    # another chat's download, for a token limited to chats: as if none ran
    mine = await svc.message_visible(request, message_id)
    done = (await svc.orchestrator.call(CancelSingle(message_id=message_id), SingleCancelOutcome)
            if mine else SingleCancelOutcome(message_id=message_id, cancelled=[]))
    if not done.cancelled:
        return SingleCancelResponse(
            message_id=message_id, status="not_downloading",
            message=f"No single-file download of message {message_id} is running")
    await svc.until_current()
    return SingleCancelResponse(message_id=message_id, status="cancelled",
                                message=f"Download of message {message_id} cancelled")


@dataclass(frozen=True)
class _Steer:
    """Pause or resume of a message's one-file batch, answered as the batch routes answer
    ("Download of message N" and what it says)."""

    command: type[PauseBatch] | type[ResumeBatch]
    outcome: type[BatchPauseOutcome] | type[BatchResumeOutcome]
    unchanged: str  # the outcome's flag, and the status, when the batch already was so
    unchanged_says: str
    changed: str
    changed_says: str


_PAUSE = _Steer(PauseBatch, BatchPauseOutcome, "already_paused", "was already paused",
                "paused", "paused; its partial file is kept")
_RESUME = _Steer(ResumeBatch, BatchResumeOutcome, "not_paused", "was not paused",
                 "resumed", "resumed")


async def _steer(steer: _Steer, svc: Services, request: Request,
                 message_id: int) -> SinglePauseResponse:
    """Steers the newest single-file request of the message (its one-file batch), if any
    the caller may see (another chat's, for a token limited to chats, is none)."""
    batch_id = (await readmodel.single_request(svc.pool, message_id)
                if await svc.message_visible(request, message_id) else None)
    done = (await svc.orchestrator.call(steer.command(batch_id=batch_id), steer.outcome)
            if batch_id else None)
    if done is None or done.already_finished:
        return SinglePauseResponse(
            message_id=message_id, status="not_downloading", download_id=batch_id,
            message=f"No single-file download of message {message_id} is under way")
    changed = not getattr(done, steer.unchanged)
    status, says = (steer.changed, steer.changed_says) if changed else (
        steer.unchanged, steer.unchanged_says)
    if changed:
        await svc.until_current()
    return SinglePauseResponse(message_id=message_id, status=status, download_id=batch_id,
                               message=f"Download of message {message_id} {says}")


@router.post("/pause/{message_id}", response_model=SinglePauseResponse,
             response_model_exclude_none=True)
async def pause(message_id: MessageId, svc: Svc, request: Request) -> SinglePauseResponse:
    """Pause the single-file download of the message: the batch pause of its one-file
    batch (its .part file stays; a batch that also wants the file keeps downloading it)."""
    return await _steer(_PAUSE, svc, request, message_id)


@router.post("/resume/{message_id}", response_model=SinglePauseResponse,
             response_model_exclude_none=True)
async def resume(message_id: MessageId, svc: Svc, request: Request) -> SinglePauseResponse:
    """Resume the paused single-file download of the message from its bytes on disk."""
    return await _steer(_RESUME, svc, request, message_id)
