"""What to do next, as data: after events were appended, after a restart, on a sweep, when
JetStream gave up on a job. Pure like the decider; `executor.py` carries the effects out.

Every effect is safe to carry out twice (recovery may repeat what a crash interrupted):
leases are joined and left idempotently, jobs are deduplicated by their ``Nats-Msg-Id``
and a decided command appends nothing when its events are already in the log.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from tgdl.contracts.catalog import CatalogEntry
from tgdl.contracts.errors import ErrorCode, Failure
from tgdl.contracts.events import (
    BatchCancelled,
    BatchEvent,
    BatchFinished,
    BatchPaused,
    JobDispatched,
    PermitGranted,
    PriorityChanged,
)
from tgdl.contracts.jobs import DownloadJob, DownloadOutcome
from tgdl.contracts.status import OutcomeStatus, Priority
from tgdl.orchestrator.batch import (
    BatchState,
    Command,
    FileState,
    Finish,
    Reconcile,
    fold,
    job_id_for,
)

# --- effects -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Decide:
    """Run a command through the batch's decider, append its events, react to them."""

    batch_id: str
    command: Command


@dataclass(frozen=True)
class Dispatch:
    """Take (or join) the message's lease for the granted job, queue the job unless
    another one already downloads the message, then record `JobDispatched`."""

    batch_id: str
    entry: CatalogEntry
    job_id: str
    force: bool
    name_template: str | None = None  # the batch's, fixed at its start
    priority: Priority = Priority.normal


@dataclass(frozen=True)
class Reprioritize:
    """The jobs of these messages that still wait for room under the global cap wait at
    `priority` from now on (`raise_only`: unless they already wait higher). `batch_id`:
    the batch whose own jobs these are; one that other batches wait for too never goes
    below the highest of their priorities."""

    message_ids: tuple[int, ...]
    priority: Priority
    raise_only: bool = False
    batch_id: str | None = None


@dataclass(frozen=True)
class LeaveLease:
    """The batch no longer waits for the message; an empty lease tells its job to stop
    (keeping its .part file if a party left it for a pause)."""

    message_id: int
    batch_id: str
    keep_part: bool = False


@dataclass(frozen=True)
class Unlist:
    """The batch is closed and its effects are done: a restart need not look at it."""

    batch_id: str


@dataclass(frozen=True)
class EndJob:
    """End a job for its downloader (the shared lifecycle: lease, outcome, release)."""

    outcome: DownloadOutcome


@dataclass(frozen=True)
class DropQueuedJob:
    """Delete a job message JetStream will not deliver again."""

    seq: int


Effect = Decide | Dispatch | Reprioritize | LeaveLease | Unlist | EndJob | DropQueuedJob
Key = tuple[str, int]  # (batch_id, message_id)


# --- after an append ---------------------------------------------------------------------


def react(event: BatchEvent, state: BatchState) -> list[Effect]:
    """Effects of one appended event; `state` is the batch after the append."""
    match event:
        case PermitGranted(message_id=m, job_id=job_id) if m in state.entries:
            return [Dispatch(event.batch_id, state.entries[m], job_id, state.force,
                             state.name_template, state.priority)]
        case PriorityChanged(priority=p) if state.running:
            # its own jobs follow it; a job it joined (another batch's) is only ever raised
            own = tuple(m for m in state.running
                        if state.jobs.get(m, "").startswith(f"{event.batch_id}:"))
            joined = tuple(m for m in state.running if m not in own)
            return [*([Reprioritize(own, p, batch_id=event.batch_id)] if own else []),
                    *([Reprioritize(joined, p, raise_only=True)] if joined else [])]
        case JobDispatched(message_id=m, attached=True) if state.priority != Priority.low:
            # joined another request's job: it must not wait behind this batch's priority
            return [Reprioritize((m,), state.priority, raise_only=True)]
        case BatchCancelled(stopped=stopped):
            # a stopped file with a job had a permit: its lease lists this batch
            return [*(LeaveLease(m, event.batch_id) for m in stopped if m in state.jobs),
                    *_discard_paused(state), Unlist(event.batch_id)]
        case BatchPaused(stopped=stopped):
            # another batch sharing the download keeps it going; alone, it stops
            return [LeaveLease(m, event.batch_id, keep_part=True) for m in stopped]
        case BatchFinished():
            return [Unlist(event.batch_id)]
    return []


def _discard_paused(state: BatchState) -> list[Effect]:
    """A cancel leaves no partial file behind, but the files a pause stopped have no job
    to discard theirs: queue one that nobody waits for (the dispatch is refused by the
    cancelled batch and leaves the lease), which drops the .part and ends. A file another
    batch is downloading is only joined and left, so that download goes on."""
    if not state.paused:
        return []
    assert state.batch_id is not None
    return [Dispatch(state.batch_id, state.entries[m],
                     job_id_for(state.batch_id, m, state.grants.get(m, 0) + 1), state.force,
                     state.name_template, state.priority)
            for m in state.paused_files]


def react_all(events: Iterable[BatchEvent], state: BatchState) -> list[Effect]:
    return [effect for event in events for effect in react(event, state)]


def after_dispatch(state: BatchState, message_id: int,
                   appended: Sequence[BatchEvent]) -> list[Effect]:
    """A dispatch whose batch was cancelled or paused while it took the lease must not
    leave the batch waiting in that lease (the cancel or pause left it before the
    dispatch joined)."""
    if not appended and state.files.get(message_id) in (FileState.cancelled,
                                                        FileState.pending):
        assert state.batch_id is not None
        # a pending file here was paused (only a pause takes a permit back): keep its bytes
        pending = state.files.get(message_id) is FileState.pending
        return [LeaveLease(message_id, state.batch_id, keep_part=pending)]
    return []


def react_to_outcome(outcome: DownloadOutcome) -> list[Effect]:
    """A job ended: every batch that waited for it learns how."""
    finish = Finish(
        message_id=outcome.message_id, job_id=outcome.job_id, status=outcome.status,
        at=outcome.at, file_path=outcome.file_path, relative_path=outcome.relative_path,
        size=outcome.size, failure=outcome.failure, same_file_as=outcome.same_file_as,
        link=outcome.link,
    )
    return [Decide(party, finish) for party in outcome.parties]


# --- interrupted work --------------------------------------------------------------------


def resume(state: BatchState, at: datetime, only: Collection[int] | None = None) -> list[Effect]:
    """Finish what a crash may have cut short in an open batch: dispatch granted files
    (those in `only`, if given), then grant free permits or finish."""
    assert state.batch_id is not None
    dispatches: list[Effect] = [
        Dispatch(state.batch_id, state.entries[m], state.jobs[m], state.force,
                 state.name_template, state.priority)
        for m in state.undispatched if only is None or m in only
    ]
    return [*dispatches, Decide(state.batch_id, Reconcile(at=at))]


def plan_recovery(batch_id: str, events: Sequence[BatchEvent], listed_for: timedelta | None,
                  at: datetime, abandoned_after: timedelta) -> list[Effect]:
    """After a restart, for one batch listed as open, given its whole log: finish the
    effects of its last append (a closed batch), resume it (an open one), or unlist an id
    whose start was never appended once it is old enough not to be starting still."""
    if not events:
        if listed_for is not None and listed_for > abandoned_after:
            return [Unlist(batch_id)]
        return []
    state = fold(events)
    if state.closed:
        return react(events[-1], state)
    # a paused batch stays paused: leave its files' leases again (a crash may have come
    # before it did) and grant nothing (the decider refuses while paused)
    paused = [LeaveLease(m, batch_id, keep_part=True) for m in state.paused_files]
    return [*paused, *resume(state, at)]


def stalled(open_batches: Iterable[BatchState], seen_before: Collection[Key],
            in_flight: Collection[Key]) -> tuple[set[Key], set[Key]]:
    """The sweep's choice: a grant without `JobDispatched` that is not being dispatched
    right now is ready to dispatch again once two sweeps in a row saw it so (its dispatch
    failed after the append, e.g. a NATS hiccup). Returns (ready, seen now)."""
    seen_now = {
        (s.batch_id, m) for s in open_batches if s.batch_id is not None
        for m in s.undispatched
    } - set(in_flight)
    return seen_now & set(seen_before), seen_now


def give_up(job: DownloadJob, seq: int, attempts: int, at: datetime) -> list[Effect]:
    """JetStream stopped redelivering a job (its downloaders kept dying): end it as
    failed, so every waiting batch hears why, and drop the undeliverable message."""
    failure = Failure.of(
        ErrorCode.worker_lost, f"the downloader stopped {attempts} times while on this file")
    outcome = DownloadOutcome(job_id=job.job_id, message_id=job.entry.message_id,
                              status=OutcomeStatus.failed, failure=failure, at=at)
    return [EndJob(outcome), DropQueuedJob(seq)]
