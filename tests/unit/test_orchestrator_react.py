"""The orchestrator's reactions as data: given what was appended (or found after a
restart, or seen by the sweep), which effects follow. No I/O, no fakes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tgdl.contracts.catalog import CatalogEntry, MediaKind
from tgdl.contracts.errors import ErrorCode
from tgdl.contracts.events import (
    BatchCancelled,
    BatchFinished,
    BatchStarted,
    FileCompleted,
    JobDispatched,
    PermitGranted,
    PriorityChanged,
)
from tgdl.contracts.jobs import DownloadJob, DownloadOutcome
from tgdl.contracts.status import OutcomeStatus, Priority
from tgdl.orchestrator.batch import Finish, Reconcile, fold
from tgdl.orchestrator.react import (
    Decide,
    Dispatch,
    DropQueuedJob,
    EndJob,
    LeaveLease,
    Reprioritize,
    Unlist,
    after_dispatch,
    give_up,
    plan_recovery,
    react,
    react_to_outcome,
    resume,
    stalled,
)

AT = datetime(2026, 1, 1, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def entry(m: int) -> CatalogEntry:
    return CatalogEntry(message_id=m, chat="c", telegram_message_id=m,
                        media_kind=MediaKind.photo, file_name=f"{m}.jpg", size=10)


def history(b: str, ids: list[int], granted: list[int], dispatched: list[int] = (),
            force: bool = False) -> list:
    return [
        BatchStarted(batch_id=b, at=AT, kind="batch", max_concurrent=2, force=force,
                     requested_ids=ids, to_download=[entry(m) for m in ids],
                     already_downloaded=[], failed_to_start=[]),
        *(PermitGranted(batch_id=b, at=AT, message_id=m, job_id=f"{b}:{m}") for m in granted),
        *(JobDispatched(batch_id=b, at=AT, message_id=m, job_id=f"{b}:{m}", attached=False)
          for m in dispatched),
    ]


def test_a_permit_dispatches_its_file_with_the_batch_force():
    events = history("b", [1, 2], [1], force=True)
    assert react(events[-1], fold(events)) == [Dispatch("b", entry(1), "b:1", True)]


def test_a_cancel_leaves_the_leases_of_files_with_permits_then_unlists():
    events = [*history("b", [1, 2, 3], [1, 2], [1]),
              BatchCancelled(batch_id="b", at=AT, stopped=[1, 2, 3])]
    assert react(events[-1], fold(events)) == [
        LeaveLease(1, "b"), LeaveLease(2, "b"), Unlist("b")]  # 3 never had a lease


def test_a_finish_unlists_and_other_events_need_nothing():
    done = BatchFinished(batch_id="b", at=AT, overall_status="completed", completed=1,
                         failed=0)
    assert react(done, fold([*history("b", [], []), done])) == [Unlist("b")]
    events = history("b", [1], [1], [1])
    assert react(events[0], fold(events)) == [] and react(events[-1], fold(events)) == []


def test_an_outcome_finishes_the_file_in_every_waiting_batch():
    outcome = DownloadOutcome(job_id="a:1", message_id=1, status=OutcomeStatus.completed,
                              parties=["a", "b"], file_path="/m/1", relative_path="1",
                              size=10, at=AT)
    effects = react_to_outcome(outcome)
    assert [e.batch_id for e in effects] == ["a", "b"]
    assert all(isinstance(e, Decide) and isinstance(e.command, Finish) for e in effects)


def test_resume_dispatches_granted_files_then_reconciles():
    state = fold(history("b", [1, 2, 3], [1, 2], [1]))
    assert resume(state, AT) == [Dispatch("b", entry(2), "b:2", False),
                                 Decide("b", Reconcile(at=AT))]
    assert resume(state, AT, only={7}) == [Decide("b", Reconcile(at=AT))]


def test_recovery_plan_for_each_kind_of_listed_batch():
    open_batch = history("a", [1, 2], [1, 2])
    assert plan_recovery("a", open_batch, None, AT, MINUTE) == resume(fold(open_batch), AT)
    cancelled = [*history("b", [9], [9], [9]),
                 BatchCancelled(batch_id="b", at=AT, stopped=[9])]
    assert plan_recovery("b", cancelled, None, AT, MINUTE) == [LeaveLease(9, "b"), Unlist("b")]
    # listed, but its start never appended: unlisted only once surely abandoned
    assert plan_recovery("d", [], timedelta(seconds=5), AT, MINUTE) == []
    assert plan_recovery("d", [], 2 * MINUTE, AT, MINUTE) == [Unlist("d")]
    assert plan_recovery("d", [], None, AT, MINUTE) == []


def test_a_stall_must_be_seen_twice_and_never_while_its_dispatch_runs():
    s = fold(history("b", [1, 2, 3], [1, 2, 3], [1]))
    ready, seen = stalled([s], seen_before=set(), in_flight=set())
    assert ready == set() and seen == {("b", 2), ("b", 3)}
    ready, seen = stalled([s], seen_before=seen, in_flight={("b", 3)})
    assert ready == {("b", 2)} and seen == {("b", 2)}


def test_a_dispatch_that_lost_to_a_cancel_leaves_its_lease():
    cancelled = fold([*history("b", [1], [1]),
                      BatchCancelled(batch_id="b", at=AT, stopped=[1])])
    assert after_dispatch(cancelled, 1, appended=[]) == [LeaveLease(1, "b")]
    running = fold(history("b", [1], [1], [1]))
    assert after_dispatch(running, 1, appended=[]) == []
    done = fold([*history("b", [1], [1], [1]), FileCompleted(
        batch_id="b", at=AT, message_id=1, job_id="b:1", file_path="/m/1",
        relative_path="1", size=10)])
    assert after_dispatch(done, 1, appended=[]) == []


def test_giving_up_on_a_job_ends_it_as_worker_lost_and_drops_its_message():
    [end, drop] = give_up(DownloadJob(job_id="b:1", entry=entry(1)), 42, 6, AT)
    assert isinstance(end, EndJob) and drop == DropQueuedJob(42)
    assert end.outcome.status is OutcomeStatus.failed and end.outcome.message_id == 1
    assert end.outcome.failure.error is ErrorCode.worker_lost
    assert "6 times" in end.outcome.failure.detail


def test_a_new_priority_moves_the_batchs_own_waiting_jobs_and_only_raises_joined_ones():
    joined = JobDispatched(batch_id="b", at=AT, message_id=2, job_id="other:2", attached=True)
    events = [*history("b", [1, 2, 3], [1, 2], [1]), joined]
    low = PriorityChanged(batch_id="b", at=AT, priority=Priority.low, previous=Priority.normal)
    assert react(low, fold([*events, low])) == [
        Reprioritize((1,), Priority.low, batch_id="b"),
        Reprioritize((2,), Priority.low, raise_only=True)]
    # joining a job raises it to the batch's priority (a low batch never needs to)
    high = [*events[:-1], PriorityChanged(batch_id="b", at=AT, priority=Priority.high,
                                          previous=Priority.normal), joined]
    assert react(joined, fold(high)) == [Reprioritize((2,), Priority.high, raise_only=True)]
    assert react(joined, fold([*events[:-1], low, joined])) == []


def test_a_permit_dispatches_at_the_batchs_priority():
    events = [*history("b", [1, 2], []), PriorityChanged(
        batch_id="b", at=AT, priority=Priority.high, previous=Priority.normal),
        PermitGranted(batch_id="b", at=AT, message_id=1, job_id="b:1")]
    (dispatch,) = react(events[-1], fold(events))
    assert dispatch.priority == Priority.high
