"""Steering a batch under way: pause, resume, a new max_concurrent or priority. The
orchestrator decides (the rules live in its batch decider); this module only words the
answers."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request

from tgdl.contracts.api import (
    BatchPauseResponse,
    BatchResumeResponse,
    BatchSettingsRequest,
    BatchSettingsResponse,
)
from tgdl.contracts.commands import (
    BATCH_ID_PATTERN,
    BatchPauseOutcome,
    BatchResumeOutcome,
    ConcurrencyOutcome,
    PauseBatch,
    PriorityOutcome,
    ResumeBatch,
    SetConcurrency,
    SetPriority,
)
from tgdl.db import readmodel
from tgdl.gateway.batches import batch_not_found
from tgdl.gateway.services import Services, services

router = APIRouter(prefix="/api/media", tags=["batches"])

BatchId = Annotated[str, Path(pattern=BATCH_ID_PATTERN, description="as returned at start")]
Svc = Annotated[Services, Depends(services)]


async def visible(svc: Services, request: Request, batch_id: str) -> None:
    if not await svc.batch_visible(request, batch_id):
        raise batch_not_found(batch_id, svc.freshness.reason())


def _files(n: int) -> str:
    return f"{n} download" if n == 1 else f"{n} downloads"


@router.post("/batch-pause/{batch_id}", response_model=BatchPauseResponse)
async def batch_pause(batch_id: BatchId, svc: Svc, request: Request) -> BatchPauseResponse:
    """No new downloads start; running ones stop within about a second and keep their
    partial files, so a resume continues from the bytes on disk. A file another batch
    also waits for keeps downloading for that batch."""
    await visible(svc, request, batch_id)
    done = await svc.orchestrator.call(PauseBatch(batch_id=batch_id), BatchPauseOutcome)
    if done.already_finished:
        status, message = "already_finished", "Batch had already finished; nothing to pause"
    elif done.already_paused:
        status, message = "already_paused", "Batch was already paused"
    else:
        status = "paused"
        message = f"Batch paused, {_files(len(done.stopped))} stopped; partial files are kept"
        await svc.until_current()
    return BatchPauseResponse(status=status, message=message, batch_id=batch_id,
                              paused_downloads=len(done.stopped), total_files=done.total_files)


@router.post("/batch-resume/{batch_id}", response_model=BatchResumeResponse)
async def batch_resume(batch_id: BatchId, svc: Svc, request: Request) -> BatchResumeResponse:
    """Downloads start again up to the batch's max_concurrent, continuing from the bytes
    already on disk."""
    await visible(svc, request, batch_id)
    done = await svc.orchestrator.call(ResumeBatch(batch_id=batch_id), BatchResumeOutcome)
    if done.already_finished:
        status, message = "already_finished", "Batch had already finished; nothing to resume"
    elif done.not_paused:
        status, message = "not_paused", "Batch was not paused; it keeps running"
    else:
        status = "resumed"
        message = f"Batch resumed, {_files(len(done.granted))} started again"
        await svc.until_current()
    return BatchResumeResponse(status=status, message=message, batch_id=batch_id,
                               resumed_downloads=len(done.granted),
                               total_files=done.total_files)


@router.patch("/batch/{batch_id}", response_model=BatchSettingsResponse,
              response_model_exclude_none=True)
async def batch_settings(batch_id: BatchId, body: BatchSettingsRequest,
                         svc: Svc, request: Request) -> BatchSettingsResponse:
    """Change max_concurrent (1-5) and/or priority (high, normal, low) of a batch under
    way. Raising max_concurrent starts more downloads at once; lowering it lets running
    downloads finish and starts fewer after them. A new priority moves the batch's
    downloads that have not started yet; running ones go on."""
    await visible(svc, request, batch_id)
    limit = priority = None
    if body.max_concurrent is not None:
        limit = await svc.orchestrator.call(
            SetConcurrency(batch_id=batch_id, max_concurrent=body.max_concurrent),
            ConcurrencyOutcome)
    if body.priority is not None:
        priority = await svc.orchestrator.call(
            SetPriority(batch_id=batch_id, priority=body.priority), PriorityOutcome)
    changes = []
    if limit is not None and limit.max_concurrent != limit.previous:
        change = f"max_concurrent changed from {limit.previous} to {limit.max_concurrent}"
        if limit.granted:
            change += f", {_files(len(limit.granted))} started"
        changes.append(change)
    if priority is not None and priority.priority != priority.previous:
        changes.append(f"priority changed from {priority.previous} to {priority.priority}")
    finished = (limit or priority).already_finished  # type: ignore[union-attr]
    if finished:
        status = "already_finished"
        message = (f"Batch had already finished; max_concurrent stays {limit.max_concurrent}"
                   if limit else f"Batch had already finished; priority stays "
                   f"{priority.priority}")  # type: ignore[union-attr]
    elif changes:
        status, message = "changed", "; ".join(changes)
        await svc.until_current()
    else:
        kept = [f"max_concurrent already was {limit.max_concurrent}"] if limit else []
        kept += [f"priority already was {priority.priority}"] if priority else []
        status, message = "unchanged", "; ".join(kept)
    if limit is None:  # only the priority was asked about: say what the limit is
        current = await readmodel.batch_status(svc.pool, batch_id)
        n = current.max_concurrent if current and current.max_concurrent else 0
        limit = ConcurrencyOutcome(batch_id=batch_id, max_concurrent=n, previous=n,
                                   granted=[])
    return BatchSettingsResponse(
        status=status, message=message, batch_id=batch_id,
        max_concurrent=limit.max_concurrent, previous_max_concurrent=limit.previous,
        started_downloads=limit.granted,
        priority=priority.priority if priority else None,
        previous_priority=priority.previous if priority else None)
