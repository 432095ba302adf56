"""The batch API: start, status (from the read model), cancel, live events (SSE)."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response, StreamingResponse
from nats.aio.subscription import Subscription

from tgdl.contracts.api import (
    BatchCancelResponse,
    BatchDownloadRequest,
    BatchDownloadResponse,
    BatchPage,
    BatchStatusResponse,
    ErrorBody,
)
from tgdl.contracts.commands import (
    BATCH_ID_PATTERN,
    BatchAccepted,
    BatchCancelOutcome,
    CancelBatch,
    StartBatch,
)
from tgdl.contracts.errors import ErrorCode
from tgdl.db import readmodel
from tgdl.db.readmodel import n_files, snapshot_json
from tgdl.gateway.errors import ApiError, read_model_behind
from tgdl.gateway.idempotency import IdempotencyKey
from tgdl.gateway.services import Services, caller_chats, services, token_chats

router = APIRouter(prefix="/api/media", tags=["batches"])

BatchId = Annotated[str, Path(pattern=BATCH_ID_PATTERN, description="as returned at start")]
Svc = Annotated[Services, Depends(services)]

KEEPALIVE_SECONDS = 15.0
log = logging.getLogger("tgdl.gateway")


def batch_not_found(batch_id: str, stale: str | None = None) -> ApiError:
    """No such batch; or, while the read model cannot be current (`stale`, from
    Freshness.reason), no such batch yet: it may have been started meanwhile."""
    if stale is not None:
        return read_model_behind(f"no batch {batch_id!r} in the read model", stale)
    return ApiError(404, "batch_not_found", f"no batch with id {batch_id!r}",
                    "Use the batch_id returned by POST /api/media/batch-download.")


def limited(request: Request, command: StartBatch) -> StartBatch:
    """The command with the chats the caller's token is limited to, if it is (as the
    token names them: the orchestrator takes each chat by all its names)."""
    chats = getattr(request.state, "tgdl_chats", None)
    return command if chats is None else command.model_copy(update={"chats": sorted(chats)})


async def start(svc: Services, command: StartBatch) -> BatchAccepted:
    """Ask the orchestrator for a batch (the single-file API uses it too) and wait briefly
    until the read model knows it, so a status query right after finds it: also a batch
    where nothing could start, which exists (ended as failed) all the same."""
    accepted = await svc.orchestrator.call(command, BatchAccepted)
    await svc.until_projected(accepted.batch_id)
    return accepted


def start_message(accepted: BatchAccepted) -> str:
    parts = [f"{len(accepted.started)} to download"] if accepted.started else []
    if accepted.already_downloaded:
        parts.append(f"{len(accepted.already_downloaded)} already downloaded")
    if accepted.already_downloading:
        parts.append(f"{len(accepted.already_downloading)} already downloading elsewhere "
                     "(shared)")
    if accepted.failed_to_start:
        parts.append(f"{len(accepted.failed_to_start)} could not start")
    files = n_files(len(accepted.requested_ids))
    if not accepted.started:  # the batch ended as it began (status completed or failed)
        return f"Nothing to download among {files}: {', '.join(parts)}"
    return f"Batch download started with {files}: {', '.join(parts)}"


def start_response(accepted: BatchAccepted) -> BatchDownloadResponse:
    return BatchDownloadResponse(
        batch_id=accepted.batch_id,
        # as the batch ends when nothing downloads: failed if any file could not start
        status="started" if accepted.started else (
            "failed" if accepted.failed_to_start else "completed"),
        message=start_message(accepted),
        total_files=len(accepted.requested_ids),
        started_downloads=accepted.started,
        already_downloaded=accepted.already_downloaded,
        failed_to_start=accepted.failed_to_start,
        already_downloading=accepted.already_downloading,
    )


@router.post("/batch-download", response_model=BatchDownloadResponse)
async def batch_download(body: BatchDownloadRequest, svc: Svc, request: Request,
                         idempotency_key: IdempotencyKey = None) -> BatchDownloadResponse:
    async def answer() -> BatchDownloadResponse:
        return start_response(await start(svc, limited(request, body.command())))
    return await svc.idempotency.once(idempotency_key, body, BatchDownloadResponse, answer)


@router.post("/batch-retry/{batch_id}", response_model=BatchDownloadResponse)
async def batch_retry(batch_id: BatchId, svc: Svc, request: Request) -> BatchDownloadResponse:
    """Start a new batch of this batch's failed and cancelled files (not those without
    media or deleted in Telegram: another try cannot mend them), with its concurrency,
    priority and naming template, so their kept bytes are resumed where they are."""
    plan = await readmodel.retry_plan(svc.pool, batch_id)
    if plan is None or not await svc.batch_visible(request, batch_id):
        raise batch_not_found(batch_id, svc.freshness.reason())
    if not plan.message_ids:
        raise ApiError(409, "nothing_to_retry",
                       f"batch {batch_id!r} has no failed or cancelled file another try "
                       "could mend (none without media or deleted in Telegram)",
                       f"See its files with GET /api/media/batch-status/{batch_id}.")
    command = StartBatch(message_ids=plan.message_ids, max_concurrent=plan.max_concurrent,
                         priority=plan.priority, name_template=plan.name_template)
    return start_response(await start(svc, limited(request, command)))


@router.get("/batches", response_model=BatchPage)
async def batch_list(svc: Svc, request: Request,
                     offset: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
                     limit: Annotated[int, Query(ge=1, le=100)] = 20) -> BatchPage:
    """Batches newest first (single-file requests among them, as kind "single"), each
    with its counts and overall progress; GET batch-status/{id} has the files. A token
    limited to chats lists only the batches it may see (all their files in its chats)."""
    return await readmodel.batch_page(svc.pool, offset, limit,
                                      await token_chats(request))


@router.get("/batch-status/{batch_id}", response_model=BatchStatusResponse)
async def batch_status(batch_id: BatchId, svc: Svc, request: Request) -> Response:
    status = await readmodel.batch_status(svc.pool, batch_id)
    if status is None or not await svc.batch_visible(request, batch_id):
        raise batch_not_found(batch_id, svc.freshness.reason())
    # The same bytes the projector publishes on NATS (see readmodel.status_body), plus
    # `stale` when the read model cannot be current.
    body = await svc.view(await caller_chats(request), snapshot_json(status))
    return Response(svc.freshness.mark(body), media_type="application/json")


@router.post("/batch-cancel/{batch_id}", response_model=BatchCancelResponse)
async def batch_cancel(batch_id: BatchId, svc: Svc, request: Request) -> BatchCancelResponse:
    if not await svc.batch_visible(request, batch_id):
        raise batch_not_found(batch_id, svc.freshness.reason())
    done = await svc.orchestrator.call(CancelBatch(batch_id=batch_id), BatchCancelOutcome)
    if done.already_finished:
        return BatchCancelResponse(
            status="already_finished", batch_id=batch_id, cancelled_downloads=0,
            total_files=done.total_files,
            message="Batch had already finished; nothing to cancel")
    await svc.until_current()
    return BatchCancelResponse(
        status="cancelled", batch_id=batch_id, cancelled_downloads=len(done.stopped),
        total_files=done.total_files,
        message=f"Batch cancelled, {len(done.stopped)} downloads stopped")


@router.get("/batch-events/{batch_id}", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "batch-status bodies as server-sent events"}})
async def batch_events(batch_id: BatchId, svc: Svc, request: Request) -> StreamingResponse:
    """The batch's status now, then every change, as server-sent events; the stream
    ends after the snapshot that says the batch finished."""
    if not await svc.batch_visible(request, batch_id):
        raise batch_not_found(batch_id, svc.freshness.reason())
    chats = await caller_chats(request)
    # Subscribe before reading the current status, so no change falls in between.
    sub = await svc.nc.subscribe(svc.settings.names.batch_progress(batch_id))
    try:
        current = await readmodel.batch_status(svc.pool, batch_id)
        if current is not None:
            first = snapshot_json(current)
        else:  # maybe accepted a moment ago and not projected yet
            try:
                first = (await sub.next_msg(timeout=svc.settings.projection_wait)).data
            except TimeoutError:
                raise batch_not_found(batch_id, svc.freshness.reason()) from None
    except BaseException:
        await sub.unsubscribe()
        raise

    async def read_again() -> bytes | None:
        status = await readmodel.batch_status(svc.pool, batch_id)
        return None if status is None else snapshot_json(status)
    return StreamingResponse(_relay(sub, first, lambda body: svc.view(chats, body),
                                    read_again),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _finished(snapshot: bytes) -> bool:
    try:
        return bool(json.loads(snapshot).get("finished"))
    except (ValueError, AttributeError):
        return False


async def _relay(sub: Subscription, first: bytes,
                 view: Callable[[bytes], Awaitable[bytes]],
                 read_again: Callable[[], Awaitable[bytes | None]]) -> AsyncIterator[bytes]:
    """Each snapshot as an event until the batch finished. A quiet stream reads the
    batch again at each keep-alive: a snapshot published while this gateway's NATS
    connection was down is lost, and the last one would otherwise never come."""
    try:
        snapshot = first
        while True:
            try:
                body = await view(snapshot)
            except Exception as exc:  # an outage mid-stream: say so, then end
                yield _error_event(exc)
                return
            yield b"data: " + body + b"\n\n"
            if _finished(snapshot):
                return
            while True:
                try:
                    snapshot = (await sub.next_msg(timeout=KEEPALIVE_SECONDS)).data
                    break
                except TimeoutError:
                    with contextlib.suppress(Exception):  # an outage: try at the next one
                        latest = await read_again()
                        if latest is not None and latest != snapshot:
                            snapshot = latest
                            break
                    yield b": keep-alive\n\n"  # keeps proxies from closing an idle stream
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


def _error_event(exc: Exception) -> bytes:
    """An SSE `error` event with the error body an answer would have had."""
    if isinstance(exc, ApiError):
        body = exc.body
    else:
        log.warning("event stream ended by %r", exc)
        body = ErrorBody(error=ErrorCode.internal.value,
                         detail="the gateway could not go on with this event stream",
                         suggestion="Open the stream again; GET batch-status reads it once.")
    return b"event: error\ndata: " + body.model_dump_json(exclude_none=True).encode() + b"\n\n"
