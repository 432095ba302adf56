"""What the orchestrator does with each input: load the batch, decide, append, then act
on what was appended (the event log is the outbox: jobs are published *because of*
PermitGranted events, with a Nats-Msg-Id derived from them)."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from tgdl.bus.leases import Leases
from tgdl.contracts.api import BatchCancelResponse, BatchDownloadResponse, SingleCancelResponse
from tgdl.contracts.catalog import CatalogEntry
from tgdl.contracts.commands import CancelBatch, CancelSingle, Rejection, StartBatch
from tgdl.contracts.errors import Failure
from tgdl.contracts.events import (
    BatchCancelled,
    BatchEvent,
    BatchFinished,
    BatchStarted,
    PermitGranted,
)
from tgdl.contracts.jobs import DownloadJob, DownloadOutcome
from tgdl.contracts.paths import relative_path
from tgdl.contracts.subjects import Names
from tgdl.db import catalog
from tgdl.orchestrator.batch import (
    BatchState,
    Cancel,
    FileState,
    Finish,
    MarkDispatched,
    Reconcile,
    Start,
    evolve,
    fold,
)
from tgdl.orchestrator.classify import classify
from tgdl.orchestrator.open_index import OpenBatches
from tgdl.orchestrator.repository import BatchRepository
from tgdl.orchestrator.settings import OrchestratorSettings

log = logging.getLogger(__name__)


def now() -> datetime:
    return datetime.now(UTC)


class Rejected(Exception):
    def __init__(self, rejection: Rejection) -> None:
        super().__init__(rejection.detail)
        self.rejection = rejection


def new_batch_id(kind: str) -> str:
    return f"{'batch' if kind == 'batch' else 'single'}_{uuid.uuid4().hex[:8]}"


class Orchestrator:
    def __init__(
        self,
        settings: OrchestratorSettings,
        js: JetStreamContext,
        repo: BatchRepository,
        leases: Leases,
        db: asyncpg.Pool,
        open_batches: OpenBatches,
    ) -> None:
        self.settings = settings
        self.names: Names = settings.names
        self.js = js
        self.repo = repo
        self.leases = leases
        self.db = db
        self.open_batches = open_batches
        self._in_flight: set[tuple[str, int]] = set()  # dispatches running in this process
        self._seen_stalled: set[tuple[str, int]] = set()

    # --- requests --------------------------------------------------------------------------

    async def start_batch(self, cmd: StartBatch) -> BatchDownloadResponse:
        ids = list(dict.fromkeys(cmd.message_ids))
        limit = self.settings.max_batch_ids
        if len(ids) > limit:
            raise Rejected(Rejection(
                status=422, error="too_many_files",
                detail=f"{len(ids)} message ids given; at most {limit} per batch",
                suggestion=f"split the request into batches of at most {limit} ids",
            ))
        async with self.db.acquire() as conn:
            entries = await catalog.get_many(conn, ids)
        media_root = self.settings.media_root
        leased = {m for m in entries if await self.leases.get(m) is not None}
        sorted_out = classify(
            ids, entries, _sizes_on_disk(entries.values(), media_root), media_root,
            cmd.force, self.settings.allowed_chat_set, leased,
        )
        while True:
            batch_id = new_batch_id(cmd.kind)
            await self.open_batches.add(batch_id)  # listed before it exists: see open_index
            events, _, _ = await self.repo.execute(batch_id, Start(
                batch_id=batch_id, kind=cmd.kind, max_concurrent=cmd.max_concurrent,
                force=cmd.force, requested_ids=ids, to_download=sorted_out.to_download,
                already_downloaded=sorted_out.already_downloaded,
                failed_to_start=sorted_out.failed_to_start,
                already_downloading=sorted_out.already_downloading, at=now(),
            ))
            if events:
                break  # (an empty result means the id was taken: draw another)
        await self._act_on(batch_id, events)
        started = [e.message_id for e in sorted_out.to_download]
        return BatchDownloadResponse(
            batch_id=batch_id,
            status="started" if started else (
                "completed" if sorted_out.already_downloaded else "failed"),
            message=_start_message(len(ids), started, sorted_out),
            total_files=len(ids),
            started_downloads=started,
            already_downloaded=[d.message_id for d in sorted_out.already_downloaded],
            failed_to_start=sorted_out.failed_to_start,
            already_downloading=sorted_out.already_downloading,
        )

    async def cancel_batch(self, cmd: CancelBatch) -> BatchCancelResponse:
        events, before, _ = await self.repo.execute(cmd.batch_id, Cancel(at=now()))
        if not before.exists:
            raise Rejected(Rejection(
                status=404, error="batch_not_found", detail=f"no batch {cmd.batch_id!r}",
                suggestion="check the batch_id returned when the batch was started",
            ))
        total = len(before.order) + before.completed_before + before.failed_before
        if not events:
            return BatchCancelResponse(
                status="already_finished", batch_id=cmd.batch_id, cancelled_downloads=0,
                total_files=total, message="Batch had already finished; nothing to cancel",
            )
        await self._act_on(cmd.batch_id, events, before)
        stopped = events[0].stopped if isinstance(events[0], BatchCancelled) else []
        return BatchCancelResponse(
            status="cancelled", batch_id=cmd.batch_id, cancelled_downloads=len(stopped),
            total_files=total,
            message=f"Batch cancelled, {len(stopped)} downloads stopped",
        )

    async def cancel_single(self, cmd: CancelSingle) -> SingleCancelResponse:
        current = await self.leases.get(cmd.message_id)
        singles = [p for p in current[0].parties if p.startswith("single_")] if current else []
        for party in singles:
            await self.cancel_batch(CancelBatch(batch_id=party))
        if not singles:
            return SingleCancelResponse(
                message_id=cmd.message_id, status="not_downloading",
                message=f"No single-file download of message {cmd.message_id} is running",
            )
        return SingleCancelResponse(
            message_id=cmd.message_id, status="cancelled",
            message=f"Download of message {cmd.message_id} cancelled",
        )

    # --- download outcomes -----------------------------------------------------------------

    async def on_outcome(self, outcome: DownloadOutcome) -> None:
        failure = (
            Failure(error=outcome.error, detail=outcome.detail or "",
                    suggestion=outcome.suggestion or "")
            if outcome.error else None
        )
        finish = Finish(
            message_id=outcome.message_id, job_id=outcome.job_id, status=outcome.status,
            at=outcome.at, file_path=outcome.file_path, relative_path=outcome.relative_path,
            size=outcome.size, failure=failure,
        )
        for party in outcome.parties:
            events, _, _ = await self.repo.execute(party, finish)
            await self._act_on(party, events)

    # --- acting on appended events (idempotent: recovery may run them again) ---------------

    async def _act_on(
        self, batch_id: str, events: list[BatchEvent], before: BatchState | None = None
    ) -> None:
        for event in events:
            match event:
                case PermitGranted():
                    state, _ = await self.repo.load(batch_id)
                    entry = state.entries.get(event.message_id)
                    if entry is not None:
                        await self._dispatch(batch_id, entry, event.job_id, state.force)
                case BatchCancelled() if before is not None:
                    for m in event.stopped:
                        if before.files.get(m) is FileState.running:
                            await self.leases.leave(m, batch_id)  # empty lease: job stops
                    await self.open_batches.remove(batch_id)
                case BatchFinished():
                    await self.open_batches.remove(batch_id)
                case BatchStarted() | _:
                    pass

    async def _dispatch(self, batch_id: str, entry: CatalogEntry, job_id: str, force: bool) -> None:
        key = (batch_id, entry.message_id)
        self._in_flight.add(key)
        try:
            acquired = await self.leases.acquire(entry.message_id, job_id, batch_id, force)
            if not acquired.attached:
                await self._publish_job(DownloadJob(job_id=job_id, entry=entry, force=force))
            events, _, _ = await self.repo.execute(batch_id, MarkDispatched(
                message_id=entry.message_id, job_id=acquired.job_id,
                attached=acquired.attached, at=now(),
            ))
        finally:
            self._in_flight.discard(key)
        await self._act_on(batch_id, events)

    async def _publish_job(self, job: DownloadJob, max_requeues: int = 8) -> None:
        """Queue the job once. Nats-Msg-Id drops a re-publish; if the copy it matched
        already ran and ended, the lease just taken would have no job behind it, so the job
        is queued again under the next numbered message id (itself deduplicated)."""
        body = job.model_dump_json().encode()
        for n in range(max_requeues + 1):
            msg_id = job.job_id if n == 0 else f"{job.job_id}:requeued-{n}"
            ack = await self.js.publish(self.names.download_jobs, body,
                                        stream=self.names.jobs_stream,
                                        headers={"Nats-Msg-Id": msg_id})
            if not ack.duplicate or await self._still_queued(ack.seq):
                return
        raise RuntimeError(f"job {job.job_id} was queued {max_requeues} times already")

    async def _still_queued(self, seq: int) -> bool:
        try:
            await self.js.get_msg(self.names.jobs_stream, seq)
            return True
        except NotFoundError:  # acknowledged, so removed from the work queue
            return False

    async def recover(self, abandoned_after: timedelta = timedelta(minutes=1)) -> int:
        """After a restart: finish what a crash may have interrupted between an append and
        its effects (dispatch granted files, grant free permits, leave cancelled leases,
        unlist closed batches). Looks only at the batches listed as open."""
        for batch_id in await self.open_batches.list():
            events, seq = await self.repo.history(batch_id)
            if not events:
                listed = await self.open_batches.listed_for(batch_id)
                if listed is not None and listed > abandoned_after:
                    await self.open_batches.remove(batch_id)  # its start never got appended
                continue
            before = fold(events[:-1])
            state = evolve(before, events[-1])
            if state.closed:
                await self._act_on(batch_id, events[-1:], before)
                continue
            self.repo.prime(batch_id, state, seq)
            await self._settle(state)
        return len(self.repo.open_batches())

    async def sweep(self) -> None:
        """Periodically: a grant whose dispatch failed after its append (a NATS hiccup)
        is dispatched again once it has been seen stalled on two sweeps in a row."""
        stalled = {
            (s.batch_id, m) for s in self.repo.open_batches() for m in s.undispatched
        } - self._in_flight
        ready, self._seen_stalled = stalled & self._seen_stalled, stalled
        for batch_id in {b for b, _ in ready}:
            state, _ = await self.repo.reload(batch_id)  # another replica may have done it
            if state.exists and not state.closed:
                await self._settle(state, only={m for b, m in ready if b == batch_id})

    async def _settle(self, state: BatchState, only: set[int] | None = None) -> None:
        assert state.batch_id is not None
        for m in state.undispatched:
            if only is None or m in only:
                await self._dispatch(state.batch_id, state.entries[m], state.jobs[m], state.force)
        events, _, _ = await self.repo.execute(state.batch_id, Reconcile(at=now()))
        await self._act_on(state.batch_id, events)


def _sizes_on_disk(entries, media_root: Path) -> dict[int, int]:
    sizes: dict[int, int] = {}
    for entry in entries:
        if entry.media_kind is None:
            continue
        path = media_root / relative_path(entry)
        if path.is_file():
            sizes[entry.message_id] = path.stat().st_size
    return sizes


def _start_message(total: int, started: list[int], c) -> str:
    parts = [f"{len(started)} to download"]
    if c.already_downloaded:
        parts.append(f"{len(c.already_downloaded)} already downloaded")
    if c.already_downloading:
        parts.append(f"{len(c.already_downloading)} already downloading elsewhere (shared)")
    if c.failed_to_start:
        parts.append(f"{len(c.failed_to_start)} could not start")
    return f"Batch download started with {total} files: {', '.join(parts)}"


