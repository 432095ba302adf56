"""What the orchestrator does with each input: load the batch, decide (`batch.py`), append,
react (`react.py`), execute (`executor.py`). The event log is the outbox: jobs are
published *because of* PermitGranted events, with a Nats-Msg-Id derived from them.

Commands answer with domain results (`tgdl.contracts.commands`), never HTTP: the gateway
alone chooses status codes and wording.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Iterable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from tgdl.bus.eventlog import LogFull
from tgdl.bus.samefile import complete_copy, copy_size, link_or_copy
from tgdl.contracts.catalog import CatalogEntry
from tgdl.contracts.commands import (
    BatchAccepted,
    BatchCancelOutcome,
    BatchPauseOutcome,
    BatchResumeOutcome,
    CancelBatch,
    CancelSingle,
    ConcurrencyOutcome,
    PauseBatch,
    PriorityOutcome,
    Rejection,
    RejectReason,
    ResumeBatch,
    SetConcurrency,
    SetPriority,
    SingleCancelOutcome,
    StartBatch,
)
from tgdl.contracts.config import chat_key, narrowed
from tgdl.contracts.events import (
    BatchCancelled,
    BatchEvent,
    BatchPaused,
    BatchStarted,
    PermitGranted,
)
from tgdl.contracts.jobs import DownloadOutcome, FileRecord
from tgdl.contracts.paths import relative_path
from tgdl.contracts.status import BatchKind
from tgdl.orchestrator import metrics
from tgdl.orchestrator.batch import (
    BatchState,
    Cancel,
    CompleteCopy,
    Pause,
    Resume,
    SetMaxConcurrent,
    Start,
    fold,
    same_file_links,
)
from tgdl.orchestrator.batch import SetPriority as ChangePriority
from tgdl.orchestrator.executor import Executor
from tgdl.orchestrator.ports import Ports
from tgdl.orchestrator.react import (
    Key,
    give_up,
    plan_recovery,
    react_all,
    react_to_outcome,
    resume,
    stalled,
)
from tgdl.orchestrator.repository import BatchRepository
from tgdl.orchestrator.settings import OrchestratorSettings
from tgdl.orchestrator.triage import triage_request

log = logging.getLogger("tgdl.orchestrator")


def new_batch_id(kind: BatchKind) -> str:
    # the prefix is for people reading logs; code takes the kind from the batch's state
    return f"{kind}_{uuid.uuid4().hex[:8]}"


class Orchestrator:
    def __init__(self, settings: OrchestratorSettings, ports: Ports) -> None:
        self.settings = settings
        self.ports = ports
        self.repo = BatchRepository(ports.log)
        self.executor = Executor(self.repo, ports, settings.allowed_chat_set)
        self._seen_stalled: set[Key] = set()

    # --- commands --------------------------------------------------------------------------

    async def start_batch(self, cmd: StartBatch) -> BatchAccepted | Rejection:
        ids = list(dict.fromkeys(cmd.message_ids))
        limit = self.settings.max_batch_ids
        if len(ids) > limit:  # the one place this limit is checked
            return Rejection(reason=RejectReason.too_many_files,
                             detail=f"{len(ids)} message ids given; at most {limit} per batch")
        if cmd.batch_id is not None:  # the caller's id: a start sent again is answered
            started = await self._started(cmd.batch_id)
            if started is not None:
                return started
        batch_id = cmd.batch_id or new_batch_id(cmd.kind)
        # One round trip for all of it: the catalog (then the records of its files), the
        # lease of every id, and listing the batch before it exists (so a restart finds it;
        # an unused listing is removed).
        async def entries_and_records():
            entries = await self.ports.catalog.get_many(ids)
            return entries, await self._records(entries.values(), cmd.force)

        try:
            (entries, records), _, *held = await asyncio.gather(
                entries_and_records(), self.ports.open_batches.add(batch_id),
                *(self.ports.leases.get(m) for m in ids))
        except Exception:
            with contextlib.suppress(Exception):
                await self.ports.open_batches.remove(batch_id)
            raise
        media_root = self.settings.media_root
        template = cmd.name_template or self.settings.name_template  # fixed from here on
        leased = {m for m, lease in zip(ids, held, strict=True)
                  if lease is not None and m in entries}
        sizes = _sizes_on_disk(entries.values(), media_root, template)
        triage = triage_request(
            ids, entries, sizes, media_root, cmd.force,
            await self._readable(cmd.chats), leased, template,
        )
        first = Start(
            batch_id=batch_id, kind=cmd.kind, max_concurrent=cmd.max_concurrent,
            force=cmd.force, requested_ids=ids, to_download=triage.to_download,
            already_downloaded=triage.already_downloaded,
            failed_to_start=triage.failed_to_start,
            already_downloading=triage.already_downloading, at=self.ports.clock.now(),
            name_template=template,
            rule_id=cmd.rule_id,
            priority=cmd.priority,
            copies=await self._complete_copies(triage.to_download, records, template),
        )
        # The files the decider takes as done through another message's copy get theirs
        # before the start is recorded: no status ever names a file not yet there.
        first = replace(first, copies=await self._link(same_file_links(first)))
        listed = True
        while True:
            if not listed:  # the id drawn was taken: draw another
                if cmd.batch_id is not None:  # the same start, sent twice at once
                    if (started := await self._started(cmd.batch_id)) is not None:
                        return started
                batch_id = new_batch_id(cmd.kind)
                await self.ports.open_batches.add(batch_id)  # listed before it exists
            listed = False
            start = replace(first, batch_id=batch_id, at=self.ports.clock.now())
            try:
                events, _, after = await self.repo.execute(batch_id, start)
            except LogFull as exc:  # the start and its grants are one message: none stored
                await self.ports.open_batches.remove(batch_id)
                return Rejection(reason=RejectReason.storage_full,
                                 detail=f"no room for a new batch log ({exc})")
            try:
                await self.executor.carry_out(react_all(events, after))
            except LogFull:  # the batch exists; the sweep dispatches once there is room
                log.warning("batch %s started, but its log is full; dispatch waits", batch_id)
            if events:
                break  # (nothing appended means the id was taken: draw another)
        return _accepted(next(e for e in events if isinstance(e, BatchStarted)))

    async def _started(self, batch_id: str) -> BatchAccepted | None:
        """How the batch under this id was accepted, if it exists."""
        events, _ = await self.repo.history(batch_id)
        start = next((e for e in events if isinstance(e, BatchStarted)), None)
        return None if start is None else _accepted(start)

    async def _readable(self, token_chats: Iterable[str] | None) -> frozenset[str] | None:
        """The chats a start may download from: the allow-list narrowed by the caller's
        token, each chat counting by every name it was reached by (None: any chat)."""
        allowed = self.settings.allowed_chat_set
        if allowed is not None:
            allowed = await self.ports.catalog.every_name(allowed)
        if token_chats is not None:
            token_chats = await self.ports.catalog.every_name(
                frozenset(chat_key(c) for c in token_chats))
        return narrowed(allowed, token_chats)

    async def _records(self, entries: Iterable[CatalogEntry], force: bool
                       ) -> dict[int, FileRecord]:
        """The file records of these messages' Telegram files that name a complete copy
        (none with `force`: the decider links nothing then)."""
        files = self.ports.files
        wanted = [e for e in entries if e.location is not None]
        if files is None or force or not wanted:
            return {}
        found = await asyncio.gather(
            *(files.get(e.location.file_key) for e in wanted if e.location is not None))
        return {e.message_id: got[0] for e, got in zip(wanted, found, strict=True)
                if got is not None and got[0].relative_path is not None}

    async def _complete_copies(self, entries: list[CatalogEntry],
                               records: dict[int, FileRecord], template: str | None
                               ) -> dict[int, CompleteCopy]:
        """The facts for `Start.copies`: which of these messages' Telegram files are whole
        on disk under another message's name (a record alone is not enough)."""
        media_root = self.settings.media_root
        recorded = [(e, records[e.message_id]) for e in entries if e.message_id in records]
        if not recorded:
            return {}
        sizes = await asyncio.to_thread(  # one thread hop for every stat
            lambda: [copy_size(media_root, r.relative_path or "") for _, r in recorded])
        copies: dict[int, CompleteCopy] = {}
        for (entry, record), size in zip(recorded, sizes, strict=True):
            own = str(relative_path(entry, template))
            if size is not None and complete_copy(record, own, entry.size, size):
                copies[entry.message_id] = CompleteCopy(
                    same_file_as=record.message_id, source=record.relative_path, size=size,
                    file_path=str(media_root / own), relative_path=own)
        return copies

    async def _link(self, copies: dict[int, CompleteCopy]) -> dict[int, CompleteCopy]:
        """Link (or copy) each message's file to its copy; returns those now on disk (the
        others are downloaded: their copy went away meanwhile, or the disk refused)."""
        media_root = self.settings.media_root

        async def link(m: int, c: CompleteCopy) -> bool:
            try:
                how = await asyncio.to_thread(
                    link_or_copy, media_root / c.source, media_root / c.relative_path)
            except OSError as exc:
                log.warning("message %d: could not link message %d's copy of the same "
                            "file (%s); it is downloaded", m, c.same_file_as, exc)
                return False
            log.info("message %d: the same file as message %d (%s)", m, c.same_file_as, how)
            return True
        done = await asyncio.gather(*(link(m, c) for m, c in copies.items()))
        return {m: c for (m, c), ok in zip(copies.items(), done, strict=True) if ok}

    async def cancel_batch(self, cmd: CancelBatch) -> BatchCancelOutcome | Rejection:
        events, before, _ = await self.executor.decide(
            cmd.batch_id, Cancel(at=self.ports.clock.now()))
        if not before.exists:
            return Rejection(reason=RejectReason.batch_not_found,
                             detail=f"no batch {cmd.batch_id!r}")
        stopped = next((e.stopped for e in events if isinstance(e, BatchCancelled)), [])
        return BatchCancelOutcome(
            batch_id=cmd.batch_id,
            total_files=len(before.order) + before.completed_before + before.failed_before,
            stopped=stopped, already_finished=not events,
        )

    async def pause_batch(self, cmd: PauseBatch) -> BatchPauseOutcome | Rejection:
        events, before, _ = await self.executor.decide(
            cmd.batch_id, Pause(at=self.ports.clock.now()))
        if not before.exists:
            return _not_found(cmd.batch_id)
        stopped = next((e.stopped for e in events if isinstance(e, BatchPaused)), [])
        return BatchPauseOutcome(batch_id=cmd.batch_id, total_files=_total(before),
                                 stopped=stopped, already_paused=before.paused,
                                 already_finished=before.closed)

    async def resume_batch(self, cmd: ResumeBatch) -> BatchResumeOutcome | Rejection:
        events, before, _ = await self.executor.decide(
            cmd.batch_id, Resume(at=self.ports.clock.now()))
        if not before.exists:
            return _not_found(cmd.batch_id)
        return BatchResumeOutcome(batch_id=cmd.batch_id, total_files=_total(before),
                                  resumed=list(before.paused_files) if events else [],
                                  granted=_granted(events),
                                  not_paused=not before.closed and not before.paused,
                                  already_finished=before.closed)

    async def set_concurrency(self, cmd: SetConcurrency) -> ConcurrencyOutcome | Rejection:
        events, before, after = await self.executor.decide(
            cmd.batch_id, SetMaxConcurrent(cmd.max_concurrent, at=self.ports.clock.now()))
        if not before.exists:
            return _not_found(cmd.batch_id)
        return ConcurrencyOutcome(batch_id=cmd.batch_id, max_concurrent=after.max_concurrent,
                                  previous=before.max_concurrent, granted=_granted(events),
                                  already_finished=before.closed)

    async def set_priority(self, cmd: SetPriority) -> PriorityOutcome | Rejection:
        _, before, after = await self.executor.decide(
            cmd.batch_id, ChangePriority(cmd.priority, at=self.ports.clock.now()))
        if not before.exists:
            return _not_found(cmd.batch_id)
        return PriorityOutcome(batch_id=cmd.batch_id, priority=after.priority,
                               previous=before.priority, already_finished=before.closed)

    async def cancel_single(self, cmd: CancelSingle) -> SingleCancelOutcome:
        """Cancel the single-file requests of the message still open: those waiting for its
        download (the lease's parties) and paused ones (a pause leaves the lease, so only
        the list of open batches knows them); batches keep it."""
        current, listed = await asyncio.gather(self.ports.leases.get(cmd.message_id),
                                               self.ports.open_batches.list())
        waiting = current[0].parties if current else []
        cancelled: list[str] = []
        for party in dict.fromkeys([*waiting, *listed]):
            state, _ = await self.repo.load(party)
            if (state.kind != BatchKind.single or state.closed
                    or cmd.message_id not in state.files):
                continue
            outcome = await self.cancel_batch(CancelBatch(batch_id=party))
            if isinstance(outcome, BatchCancelOutcome) and not outcome.already_finished:
                cancelled.append(party)
        return SingleCancelOutcome(message_id=cmd.message_id, cancelled=cancelled)

    # --- jobs ------------------------------------------------------------------------------

    async def on_outcome(self, outcome: DownloadOutcome) -> None:
        await self.executor.carry_out(react_to_outcome(outcome))
        metrics.OUTCOMES.labels(outcome.status).inc()

    async def on_job_gave_up(self, job_seq: int) -> None:
        """JetStream stopped redelivering the job stored at `job_seq`: fail it."""
        job = await self.ports.queued_jobs.get(job_seq)
        if job is None:
            return  # already handled (or never a job): nothing left to do
        await self.executor.carry_out(
            give_up(job, job_seq, self.settings.max_deliver, self.ports.clock.now()))
        metrics.JOBS_GIVEN_UP.inc()

    # --- interrupted work ------------------------------------------------------------------

    async def recover(self, abandoned_after: timedelta = timedelta(minutes=1)) -> int:
        """After a restart: finish what a crash may have interrupted between an append and
        its effects. Looks only at the batches listed as open; returns how many stay open."""
        for batch_id in await self.ports.open_batches.list():
            events, seq = await self.repo.history(batch_id)
            listed_for = None if events else await self.ports.open_batches.listed_for(batch_id)
            plan = plan_recovery(batch_id, events, listed_for, self.ports.clock.now(),
                                 abandoned_after)
            if events:
                self.repo.prime(batch_id, fold(events), seq)  # the sweep watches it from now
            await self.executor.carry_out(plan)
        return len(self.repo.open_batches())

    async def sweep(self) -> None:
        """Periodically: a grant whose dispatch failed after its append (a NATS hiccup)
        is dispatched again once it has been seen stalled on two sweeps in a row."""
        ready, self._seen_stalled = stalled(
            self.repo.open_batches(), self._seen_stalled, self.executor.in_flight)
        for batch_id in sorted({b for b, _ in ready}):
            state, _ = await self.repo.reload(batch_id)  # another replica may have done it
            if state.exists and not state.closed:
                only = {m for b, m in ready if b == batch_id}
                await self.executor.carry_out(resume(state, self.ports.clock.now(), only))


def _accepted(start: BatchStarted) -> BatchAccepted:
    return BatchAccepted(
        batch_id=start.batch_id, requested_ids=start.requested_ids,
        started=[e.message_id for e in start.to_download],
        already_downloaded=[d.message_id for d in start.already_downloaded],
        already_downloading=start.already_downloading,
        failed_to_start=start.failed_to_start,
    )


def _not_found(batch_id: str) -> Rejection:
    return Rejection(reason=RejectReason.batch_not_found, detail=f"no batch {batch_id!r}")


def _total(s: BatchState) -> int:
    return len(s.order) + s.completed_before + s.failed_before


def _granted(events: list[BatchEvent]) -> list[int]:
    return [e.message_id for e in events if isinstance(e, PermitGranted)]


def _sizes_on_disk(entries: Iterable[CatalogEntry], media_root: Path,
                   template: str | None) -> dict[int, int]:
    sizes: dict[int, int] = {}
    for entry in entries:
        if entry.media_kind is None:
            continue
        path = media_root / relative_path(entry, template)
        if path.is_file():
            sizes[entry.message_id] = path.stat().st_size
    return sizes
