"""The batch rules, fed commands and checked by the events they produce (no broker)."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from tgdl.contracts.catalog import CatalogEntry, MediaKind
from tgdl.contracts.errors import ErrorCode, Failure, FileFailure
from tgdl.contracts.events import (
    AlreadyDownloaded,
    BatchCancelled,
    BatchFinished,
    BatchPaused,
    BatchPruned,
    BatchResumed,
    BatchStarted,
    FileCompleted,
    FileFailed,
    JobDispatched,
    PermitGranted,
    PriorityChanged,
)
from tgdl.contracts.status import Priority
from tgdl.orchestrator.batch import (
    BatchState,
    Cancel,
    CompleteCopy,
    FileState,
    Finish,
    MarkDispatched,
    Pause,
    Reconcile,
    Resume,
    SetMaxConcurrent,
    SetPriority,
    Start,
    decide,
    fold,
    initial_state,
    same_file_links,
)

AT = datetime(2026, 1, 1, tzinfo=UTC)


def entry(m: int, size: int | None = 1000) -> CatalogEntry:
    return CatalogEntry(message_id=m, chat="c", telegram_message_id=100 + m,
                        media_kind=MediaKind.photo, file_name=f"{m}.jpg", size=size)


def start(ids: list[int], max_concurrent: int = 3, done: list[int] = (), refused: list[int] = ()):
    return Start(
        batch_id="b", kind="batch", max_concurrent=max_concurrent, force=False,
        requested_ids=[*ids, *done, *refused], to_download=[entry(m) for m in ids],
        already_downloaded=[AlreadyDownloaded(message_id=m, file_path=f"/m/{m}",
                                              relative_path=f"{m}", size=1000) for m in done],
        failed_to_start=[FileFailure(message_id=m, error=ErrorCode.message_not_found,
                                     detail="x", suggestion="y") for m in refused],
        already_downloading=[], at=AT,
    )


def run(state: BatchState, cmd) -> tuple[list, BatchState]:
    events = decide(cmd, state)
    return events, fold(events, state)


def done(m: int, status: str = "completed") -> Finish:
    if status == "completed":
        return Finish(message_id=m, job_id=f"b:{m}", status=status, at=AT,
                      file_path=f"/m/{m}", relative_path=f"{m}", size=1000)
    return Finish(message_id=m, job_id=f"b:{m}", status=status, at=AT,
                  failure=Failure.of(ErrorCode.message_deleted, "gone"))


def test_start_grants_exactly_max_concurrent_permits_in_request_order_among_equal_sizes():
    events, s = run(initial_state, start([5, 3, 9, 1, 7], max_concurrent=3))
    assert isinstance(events[0], BatchStarted)
    assert [(type(e), e.message_id) for e in events[1:]] == [
        (PermitGranted, 5), (PermitGranted, 3), (PermitGranted, 9)]
    assert s.running == [5, 3, 9]
    assert s.in_state(FileState.pending) == [1, 7]


def test_permits_go_to_the_largest_files_first_and_unknown_sizes_last():
    # the batch ends with its last file: small ones left for the end keep every
    # connection busy, where a large one granted last would run on its own
    sizes = {1: 10, 2: None, 3: 5000, 4: 10, 5: 700}
    cmd = replace(start(list(sizes), max_concurrent=2),
                  to_download=[entry(m, size) for m, size in sizes.items()])
    events, s = run(initial_state, cmd)
    assert [e.message_id for e in events if isinstance(e, PermitGranted)] == [3, 5]
    granted = []
    for m in (3, 5, 1, 4):
        events, s = run(s, done(m))
        granted += [e.message_id for e in events if isinstance(e, PermitGranted)]
    assert granted == [1, 4, 2]  # equal sizes in request order, the unknown size last
    assert s.in_state(FileState.pending) == []


def test_a_finished_file_hands_its_permit_to_the_next_pending_file():
    _, s = run(initial_state, start([1, 2, 3, 4], max_concurrent=2))
    events, s = run(s, done(1))
    assert [type(e) for e in events] == [FileCompleted, PermitGranted]
    assert events[1].message_id == 3
    events, s = run(s, done(2, "failed"))
    assert [type(e) for e in events] == [FileFailed, PermitGranted]
    assert events[0].failure.error is ErrorCode.message_deleted  # reason survives
    assert s.running == [3, 4]


def test_a_completed_outcome_is_recorded_as_it_came_and_one_without_its_file_fails():
    _, s = run(initial_state, start([1, 2, 3, 4], max_concurrent=4))
    completed, _ = run(s, Finish(message_id=1, job_id="b:1", status="completed", at=AT,
                                 file_path="/m/a.jpg", relative_path="a.jpg", size=1234,
                                 same_file_as=9, link="hard_link"))
    assert (completed[0].file_path, completed[0].relative_path, completed[0].size,
            completed[0].same_file_as, completed[0].link) == (
        "/m/a.jpg", "a.jpg", 1234, 9, "hard_link")
    unsized, _ = run(s, Finish(message_id=1, job_id="b:1", status="completed", at=AT,
                               file_path="/m/a.jpg", relative_path="a.jpg"))
    assert unsized[0].size == 0
    # an outcome that says neither how it failed nor where the file is: still a reason
    pathless, _ = run(s, Finish(message_id=2, job_id="b:2", status="completed", at=AT))
    assert isinstance(pathless[0], FileFailed)
    assert pathless[0].failure.error is ErrorCode.internal
    assert "ended as completed without details" in pathless[0].failure.detail
    cancelled, _ = run(s, Finish(message_id=3, job_id="b:3", status="cancelled", at=AT))
    assert cancelled[0].failure.error is ErrorCode.cancelled
    failed, _ = run(s, Finish(message_id=4, job_id="b:4", status="failed", at=AT))
    assert failed[0].failure.error is ErrorCode.internal


def test_batch_finishes_once_with_plain_status():
    _, s = run(initial_state, start([1, 2], max_concurrent=2, done=[3], refused=[4]))
    _, s = run(s, done(1))
    events, s = run(s, done(2))
    assert isinstance(events[-1], BatchFinished)
    assert (events[-1].overall_status, events[-1].completed, events[-1].failed) == (
        "failed", 3, 1)  # some failed, others completed: counted, not hidden
    assert s.closed
    assert decide(done(2), s) == [] and decide(Reconcile(at=AT), s) == []


def test_nothing_to_download_finishes_at_start():
    events, s = run(initial_state, start([], done=[1, 2]))
    assert [type(e) for e in events] == [BatchStarted, BatchFinished]
    assert events[-1].overall_status == "completed" and s.closed


def copy_of(m: int, other: int) -> CompleteCopy:
    return CompleteCopy(same_file_as=other, source=f"{other}", size=1000,
                        file_path=f"/m/{m}", relative_path=f"{m}")


def test_a_file_another_message_holds_whole_is_done_at_start_in_request_order():
    cmd = replace(start([5, 9, 7], done=[3]), copies={9: copy_of(9, 4)})
    events, s = run(initial_state, cmd)
    started = events[0]
    assert [e.message_id for e in started.to_download] == [5, 7]
    assert [(d.message_id, d.same_file_as) for d in started.already_downloaded] == [
        (9, 4), (3, None)]  # request order: 5, 9, 7, then 3
    assert started.already_downloaded[0].file_path == "/m/9"  # its own name, linked
    assert [e.message_id for e in events if isinstance(e, PermitGranted)] == [5, 7]
    assert s.completed_before == 2 and 9 not in s.files


def test_force_or_a_download_under_way_leaves_a_copy_unused():
    forced = replace(start([9]), force=True, copies={9: copy_of(9, 4)})
    busy = replace(start([9]), already_downloading=[9], copies={9: copy_of(9, 4)})
    for cmd in (forced, busy):
        assert same_file_links(cmd) == {}
        events, _ = run(initial_state, cmd)
        assert [e.message_id for e in events[0].to_download] == [9]
        assert events[0].already_downloaded == []
    only_done = replace(start([9]), copies={9: copy_of(9, 4)})
    events, _ = run(initial_state, only_done)
    assert isinstance(events[-1], BatchFinished) and events[-1].completed == 1


def test_cancel_stops_pending_and_running_and_keeps_completed():
    _, s = run(initial_state, start([1, 2, 3, 4, 5], max_concurrent=2))
    _, s = run(s, done(1))
    events, s = run(s, Cancel(at=AT))
    assert events == [BatchCancelled(batch_id="b", at=AT, stopped=[2, 3, 4, 5])]
    assert s.files[1] is FileState.completed
    assert s.closed and decide(Cancel(at=AT), s) == []
    assert decide(done(2), s) == []  # late outcomes change nothing
    assert decide(Reconcile(at=AT), s) == []


def test_outcomes_for_files_without_permit_or_twice_are_ignored():
    _, s = run(initial_state, start([1, 2, 3], max_concurrent=1))
    assert decide(done(3), s) == []  # not granted yet
    _, s = run(s, done(1))
    assert decide(done(1), s) == []  # already completed


def test_dispatch_is_recorded_once_and_attaching_keeps_the_other_job():
    _, s = run(initial_state, start([1, 2], max_concurrent=2))
    events, s = run(s, MarkDispatched(message_id=1, job_id="other:1", attached=True, at=AT))
    assert events == [JobDispatched(batch_id="b", at=AT, message_id=1, job_id="other:1",
                                    attached=True)]
    assert s.jobs[1] == "other:1" and s.undispatched == [2]
    assert decide(MarkDispatched(message_id=1, job_id="x", attached=False, at=AT), s) == []


def test_reconcile_fills_free_slots_after_a_partial_append():
    _, s = run(initial_state, start([1, 2, 3], max_concurrent=2))
    # a crash appended FileCompleted but not the PermitGranted that followed it
    s = fold([FileCompleted(batch_id="b", at=AT, message_id=1, job_id="b:1", file_path="p",
                            relative_path="r", size=1)], s)
    events, s = run(s, Reconcile(at=AT))
    assert [(type(e), e.message_id) for e in events] == [(PermitGranted, 3)]
    assert decide(Reconcile(at=AT), s) == []


def test_start_is_refused_for_an_existing_batch():
    _, s = run(initial_state, start([1]))
    assert decide(start([2]), s) == []


@pytest.mark.parametrize("max_concurrent", [1, 2, 3, 5])
@pytest.mark.parametrize("seed", range(20))
def test_permits_never_exceed_max_concurrent_and_every_file_ends(max_concurrent, seed):
    """Random orders of outcomes and a random cancel: the invariants always hold."""
    rnd = random.Random(seed)
    ids = list(range(1, rnd.randint(1, 12) + 1))
    _, s = run(initial_state, start(ids, max_concurrent=max_concurrent))
    granted: list[int] = [m for m in s.running]
    cancel_at = rnd.choice([None, *range(len(ids))])
    for step in itertools.count():
        assert len(s.running) <= max_concurrent
        if s.closed:
            break
        if step == cancel_at:
            _, s = run(s, Cancel(at=AT))
            continue
        m = rnd.choice(s.running)
        events, s = run(s, done(m, rnd.choice(["completed", "failed"])))
        granted += [e.message_id for e in events if isinstance(e, PermitGranted)]
    assert len(granted) == len(set(granted))  # no file granted twice
    assert all(st in (FileState.completed, FileState.failed, FileState.cancelled)
               for st in s.files.values())


# --- steering: pause, resume, live max_concurrent -----------------------------------------


def kinds(events) -> list[tuple[str, int | None]]:
    return [(type(e).__name__, getattr(e, "message_id", None)) for e in events]


def after(*cmds, ids=(1, 2, 3, 4, 5), max_concurrent=2) -> BatchState:
    _, s = run(initial_state, start(list(ids), max_concurrent=max_concurrent))
    for cmd in cmds:
        _, s = run(s, cmd)
    return s


PAUSE, RESUME, CANCEL = Pause(at=AT), Resume(at=AT), Cancel(at=AT)


def limit(n: int) -> SetMaxConcurrent:
    return SetMaxConcurrent(max_concurrent=n, at=AT)


def priority(p: str) -> SetPriority:
    return SetPriority(priority=Priority(p), at=AT)


# (what was done before, command) -> the events it appends
STEERING = [
    ("pause stops the running files", (), PAUSE, [("BatchPaused", None)]),
    ("pausing twice appends nothing", (PAUSE,), PAUSE, []),
    # the job the pause stopped had finished the file: it is whole, so completed
    ("a paused batch records its file completed anyway, granting nothing", (PAUSE,),
     done(1), [("FileCompleted", 1)]),
    ("but a paused file's job that ends otherwise changes nothing", (PAUSE,),
     done(1, "cancelled"), []),
    ("nor does a job of a file the pause did not stop", (PAUSE,), done(3), []),
    ("nor on a reconcile (recovery)", (PAUSE,), Reconcile(at=AT), []),
    ("nor when the limit is raised", (PAUSE,), limit(5), [("ConcurrencyChanged", None)]),
    ("resume grants up to max_concurrent, paused files first", (PAUSE,), RESUME,
     [("BatchResumed", None), ("PermitGranted", 1), ("PermitGranted", 2)]),
    ("resume of a batch not paused appends nothing", (), RESUME, []),
    ("resume after the limit was raised grants more", (PAUSE, limit(4)), RESUME,
     [("BatchResumed", None), *(("PermitGranted", m) for m in (1, 2, 3, 4))]),
    ("cancel of a paused batch stops every unfinished file", (done(1), PAUSE), CANCEL,
     [("BatchCancelled", None)]),
    ("a finished batch cannot be paused", (done(1), done(2), done(3), done(4), done(5)),
     PAUSE, []),
    ("a cancelled batch cannot be resumed", (PAUSE, CANCEL), RESUME, []),
    ("raising the limit grants at once", (), limit(4),
     [("ConcurrencyChanged", None), ("PermitGranted", 3), ("PermitGranted", 4)]),
    ("lowering it stops nothing", (), limit(1), [("ConcurrencyChanged", None)]),
    ("the same limit appends nothing", (), limit(2), []),
    ("a finished batch keeps its limit", (CANCEL,), limit(4), []),
    ("a new priority is recorded and grants nothing", (), priority("high"),
     [("PriorityChanged", None)]),
    ("the same priority appends nothing", (), priority("normal"), []),
    ("a paused batch may change priority, still granting nothing", (PAUSE,),
     priority("low"), [("PriorityChanged", None)]),
    ("a finished batch keeps its priority", (CANCEL,), priority("high"), []),
    ("a finished batch keeps its priority too", (done(1), done(2), done(3), done(4), done(5)),
     priority("low"), []),
]


@pytest.mark.parametrize(("before", "cmd", "expected"),
                         [row[1:] for row in STEERING], ids=[row[0] for row in STEERING])
def test_steering(before, cmd, expected):
    assert kinds(decide(cmd, after(*before))) == expected


def test_pause_releases_the_permits_of_running_files_and_resume_grants_them_anew():
    s = after(MarkDispatched(message_id=1, job_id="b:1", attached=False, at=AT))
    events, s = run(s, PAUSE)
    assert events == [BatchPaused(batch_id="b", at=AT, stopped=[1, 2])]
    assert s.running == [] and s.paused and s.paused_files == (1, 2)
    assert s.in_state(FileState.pending) == [1, 2, 3, 4, 5]
    events, s = run(s, RESUME)
    assert events[0] == BatchResumed(batch_id="b", at=AT, resumed=[1, 2])
    # a new job per permit: the stopped job's outcome can never pass for the new one's
    assert [e.job_id for e in events[1:]] == ["b:1:2", "b:2:2"]
    assert s.undispatched == [1, 2] and not s.paused


def test_a_late_outcome_of_a_paused_file_changes_nothing_and_a_stale_dispatch_is_ignored():
    s = after(PAUSE)
    # it was stopped for the pause (no whole file); the resume regrants it
    assert decide(done(1, "cancelled"), s) == []
    _, s = run(s, RESUME)
    stale = MarkDispatched(message_id=1, job_id="b:1", attached=False, at=AT, for_job="b:1")
    assert decide(stale, s) == []  # a dispatch of the permit the pause took back
    fresh = MarkDispatched(message_id=1, job_id="b:1:2", attached=False, at=AT,
                           for_job="b:1:2")
    assert kinds(decide(fresh, s)) == [("JobDispatched", 1)]


def test_the_late_failure_of_a_job_stopped_by_a_pause_does_not_fail_the_resumed_file():
    s = after(MarkDispatched(message_id=1, job_id="b:1", attached=False, at=AT), PAUSE,
              RESUME, MarkDispatched(message_id=1, job_id="b:1:2", attached=False, at=AT,
                                     for_job="b:1:2"))
    old = Finish(message_id=1, job_id="b:1", status="failed", at=AT,
                 failure=Failure.of(ErrorCode.network, "cut"))
    assert decide(old, s) == []  # the file follows b:1:2 now
    fresh = Finish(message_id=1, job_id="b:1:2", status="completed", at=AT, file_path="/m/1",
                   relative_path="1", size=1000)
    assert kinds(decide(fresh, s))[0] == ("FileCompleted", 1)


def test_an_outcome_before_the_dispatch_is_recorded_still_counts():
    # the dispatch joined another job that ended before JobDispatched was appended
    s = after()
    attached_job = Finish(message_id=1, job_id="other:1", status="completed", at=AT,
                          file_path="/m/1", relative_path="1", size=1000)
    assert kinds(decide(attached_job, s))[0] == ("FileCompleted", 1)


def test_after_a_lower_limit_the_next_grants_wait_until_running_files_fit_under_it():
    s = after(limit(1), ids=(1, 2, 3, 4))
    assert s.running == [1, 2]  # not interrupted
    events, s = run(s, done(1))
    assert kinds(events) == [("FileCompleted", 1)]  # 1 still running: no grant
    events, s = run(s, done(2))
    assert kinds(events) == [("FileCompleted", 2), ("PermitGranted", 3)]


def test_a_file_completed_while_paused_is_not_granted_again_at_the_resume():
    s = after(PAUSE, ids=(1, 2), max_concurrent=2)
    events, s = run(s, done(1))  # the stopped job had the whole file first
    assert kinds(events) == [("FileCompleted", 1)]
    assert s.paused and s.paused_files == (2,) and s.files[1] is FileState.completed
    events, s = run(s, RESUME)
    assert events[0] == BatchResumed(batch_id="b", at=AT, resumed=[2])
    assert kinds(events[1:]) == [("PermitGranted", 2)]
    events, s = run(s, Finish(message_id=2, job_id="b:2:2", status="completed", at=AT,
                              file_path="/m/2", relative_path="2", size=1000))
    assert kinds(events) == [("FileCompleted", 2), ("BatchFinished", None)]
    assert events[-1].completed == 2


def test_a_paused_batch_resumed_finishes_normally():
    s = after(PAUSE, RESUME, ids=(1,), max_concurrent=1)
    events, s = run(s, Finish(message_id=1, job_id="b:1:2", status="completed", at=AT,
                              file_path="/m/1", relative_path="1", size=1000))
    assert kinds(events) == [("FileCompleted", 1), ("BatchFinished", None)] and s.closed


@pytest.mark.parametrize("seed", range(30))
def test_permits_stay_within_the_live_limit_through_pauses(seed):
    """Random outcomes, pauses, resumes and limits: never more running files than the
    limit in force when they were granted, never a grant while paused, every file ends."""
    rnd = random.Random(seed)
    ids = list(range(1, rnd.randint(1, 10) + 1))
    _, s = run(initial_state, start(ids, max_concurrent=rnd.randint(1, 5)))
    for _ in range(500):
        if s.closed:
            break
        choice = rnd.random()
        if choice < 0.15:
            cmd = PAUSE
        elif choice < 0.3:
            cmd = RESUME
        elif choice < 0.4:
            cmd = limit(rnd.randint(1, 5))
        elif s.running:
            cmd = done(rnd.choice(s.running), rnd.choice(["completed", "failed"]))
        else:
            cmd = RESUME
        before = s
        events, s = run(s, cmd)
        grants = [e for e in events if isinstance(e, PermitGranted)]
        if grants:
            assert not before.paused or isinstance(cmd, Resume)
            assert len(s.running) <= s.max_concurrent
        if before.paused:
            assert not s.running or isinstance(cmd, Resume)
    else:
        pytest.fail("the batch never ended")
    assert all(st in (FileState.completed, FileState.failed) for st in s.files.values())


def test_a_pruned_batch_is_as_if_it_never_existed():
    # after `tgdl prune` the batch's log holds only the marker
    state = fold([BatchPruned(batch_id="b", at=AT)])
    assert not state.exists
    assert decide(Cancel(at=AT), state) == []  # the orchestrator answers batch_not_found


def test_priority_is_chosen_at_start_and_changes_later_with_what_it_was():
    cmd = start([1, 2])
    cmd = Start(**{**cmd.__dict__, "priority": Priority.low})
    events, s = run(initial_state, cmd)
    assert events[0].priority == Priority.low and s.priority == Priority.low
    events, s = run(s, priority("high"))
    assert events == [PriorityChanged(batch_id="b", at=AT, priority=Priority.high,
                                      previous=Priority.low)]
    assert s.priority == Priority.high
    assert s.running == [1, 2]  # permits are the batch's own: nothing stops or starts


def test_a_log_written_before_priorities_reads_as_normal():
    old = BatchStarted.model_validate_json(
        '{"batch_id": "b", "at": "2026-01-01T00:00:00Z", "kind": "batch", "max_concurrent": 1,'
        ' "force": false, "requested_ids": [1], "to_download": [], "already_downloaded": [],'
        ' "failed_to_start": []}')
    assert fold([old]).priority == Priority.normal
