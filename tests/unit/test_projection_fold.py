"""The projector's fold rules and its progress throttle, with plain data (no database)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from tgdl.contracts.catalog import CatalogEntry, MediaKind
from tgdl.contracts.errors import ErrorCode, Failure, FileFailure
from tgdl.contracts.events import (
    AlreadyDownloaded,
    BatchCancelled,
    BatchFinished,
    BatchPaused,
    BatchResumed,
    BatchStarted,
    ConcurrencyChanged,
    FileCompleted,
    FileFailed,
    JobDispatched,
    PermitGranted,
    PriorityChanged,
)
from tgdl.contracts.jobs import DownloadOutcome, DownloadProgress
from tgdl.projector.fold import (
    ApplyOutcome,
    ApplyProgress,
    CancelFiles,
    InsertBatch,
    JobRow,
    UpdateBatch,
    UpdateFile,
    fold_event,
    fold_outcome,
    fold_progress,
)
from tgdl.projector.sql import coalesce
from tgdl.projector.throttle import ProgressBuffer

AT = datetime(2026, 1, 1, tzinfo=UTC)


def later(seconds: float) -> datetime:
    return AT + timedelta(seconds=seconds)


def entry(m: int, size: int = 1000) -> CatalogEntry:
    return CatalogEntry(message_id=m, chat="c", telegram_message_id=100 + m,
                        media_kind=MediaKind.photo, file_name=f"pic {m}.jpg", size=size)


def progress(job: str = "b:1", done: int = 100, at: float = 1.0, state: str = "downloading",
             **extra) -> DownloadProgress:
    return DownloadProgress(job_id=job, message_id=1, state=state, downloaded_size=done,
                            total_size=1000, download_speed=50, at=later(at), **extra)


def outcome(status: str = "completed", job: str = "b:1", at: float = 5.0) -> DownloadOutcome:
    if status == "completed":
        return DownloadOutcome(job_id=job, message_id=1, status="completed", at=later(at),
                               file_path="/media/photos/1.jpg",
                               relative_path="photos/1.jpg", size=1000)
    return DownloadOutcome(job_id=job, message_id=1, status=status, at=later(at),
                           failure=Failure(error=ErrorCode.network, detail="gone",
                                           suggestion="retry later"))


def merge_all(changes, row: JobRow | None = None) -> JobRow | None:
    for change in changes:
        row = change.merge(row) or row
    return row


# --- batch events ------------------------------------------------------------------------


def test_batch_started_writes_the_batch_and_its_files_in_request_order():
    event = BatchStarted(
        batch_id="b", at=AT, kind="batch", max_concurrent=2, force=True,
        requested_ids=[3, 1, 2],
        to_download=[entry(1, size=4000)],
        already_downloaded=[AlreadyDownloaded(message_id=2, file_path="/m/photos/2.jpg",
                                              relative_path="photos/2.jpg", size=77)],
        failed_to_start=[FileFailure(message_id=3, error=ErrorCode.no_media,
                                     detail="text only", suggestion="pick another")],
    )
    [change] = fold_event(event)
    assert isinstance(change, InsertBatch)
    b = change.batch
    assert (b.kind, b.max_concurrent, b.force, b.total_files, b.status) == (
        "batch", 2, True, 3, "in_progress")
    assert b.created_at == b.updated_at == AT and b.finished_at is None
    failed, pending, done = change.files
    assert [f.message_id for f in change.files] == [3, 1, 2]
    assert [f.position for f in change.files] == [0, 1, 2]
    assert (failed.status, failed.error, failed.detail, failed.suggestion) == (
        "failed", "no_media", "text only", "pick another")
    assert (pending.status, pending.total_size, pending.relative_path) == (
        "pending", 4000, "photos/1_101_pic_1.jpg")
    assert (done.status, done.already_downloaded, done.file_path, done.relative_path,
            done.total_size) == ("completed", True, "/m/photos/2.jpg", "photos/2.jpg", 77)


def test_permit_queues_the_file_and_dispatch_follows_the_job_it_attached_to():
    permit = fold_event(PermitGranted(batch_id="b", at=AT, message_id=1, job_id="b:1"))
    assert permit[0] == UpdateFile("b", 1, {"status": "queued", "job_id": "b:1"})
    dispatched = fold_event(JobDispatched(batch_id="b", at=AT, message_id=1,
                                          job_id="a:1", attached=True))
    # a file's events write its file row (and job) only, never the batch row
    assert permit == [UpdateFile("b", 1, {"status": "queued", "job_id": "b:1"})]
    # no job row until the job reports: the file shows as queued meanwhile
    assert dispatched == [UpdateFile("b", 1, {"job_id": "a:1"})]


def test_file_completed_and_failed_carry_their_details():
    [done] = fold_event(FileCompleted(batch_id="b", at=AT, message_id=1, job_id="b:1",
                                         file_path="/m/x", relative_path="x", size=5))
    assert done.values["status"] == "completed"
    assert (done.values["file_path"], done.values["relative_path"],
            done.values["total_size"]) == ("/m/x", "x", 5)
    [failed] = fold_event(FileFailed(batch_id="b", at=AT, message_id=1, job_id=None,
                                        failure=Failure(error=ErrorCode.message_deleted,
                                                        detail="d", suggestion="s")))
    assert failed.values == {"status": "failed", "error": "message_deleted", "detail": "d",
                             "suggestion": "s"}  # no job: the job id stays as it was


def test_cancel_stops_the_listed_files_and_closes_the_batch():
    changes = fold_event(BatchCancelled(batch_id="b", at=AT, stopped=[2, 3]))
    assert changes == [CancelFiles("b", (2, 3)), UpdateBatch(
        "b", {"status": "cancelled", "finished_at": AT, "updated_at": AT})]


@pytest.mark.parametrize("status", ["completed", "failed"])
def test_finish_records_the_overall_status(status):
    changes = fold_event(BatchFinished(batch_id="b", at=AT, overall_status=status,
                                       completed=1, failed=1))
    assert changes == [UpdateBatch("b", {"status": status, "finished_at": AT,
                                         "updated_at": AT})]


# --- jobs: outcomes, progress, dispatch in any order -------------------------------------


def test_progress_never_moves_back_to_an_older_report():
    row = merge_all(fold_progress(progress(done=500, at=2.0)))
    assert merge_all(fold_progress(progress(done=300, at=1.0)), row) == row
    assert ApplyProgress(progress(done=300, at=1.0)).merge(row) is None
    newer = merge_all(fold_progress(progress(done=600, at=3.0, attempt=2)), row)
    assert (newer.downloaded_size, newer.attempt) == (600, 2)


def test_a_flood_wait_is_recorded_as_waiting_with_its_duration():
    row = merge_all(fold_progress(progress(state="waiting", wait_seconds=42)))
    assert (row.state, row.wait_seconds, row.downloaded_size) == ("waiting", 42, 100)


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled"])
def test_a_finished_job_is_never_overwritten_by_progress(status):
    row = merge_all(fold_outcome(outcome(status)))
    assert ApplyProgress(progress(done=999, at=9.0)).merge(row) is None
    assert row.state == status


def test_an_outcome_fixes_every_column_whatever_progress_came_before():
    direct = merge_all(fold_outcome(outcome()))
    after_progress = merge_all([*fold_progress(progress(state="waiting", wait_seconds=9,
                                                        attempt=3)),
                                *fold_outcome(outcome())])
    assert direct == after_progress
    assert (direct.state, direct.downloaded_size, direct.total_size, direct.file_path,
            direct.relative_path) == ("completed", 1000, 1000, "/media/photos/1.jpg",
                                      "photos/1.jpg")
    failed = merge_all(fold_outcome(outcome("failed")))
    assert (failed.error, failed.detail, failed.suggestion) == ("network_error", "gone",
                                                                "retry later")


def test_job_changes_commute_across_streams():
    """Progress and outcome arrive from two streams in any interleaving."""
    changes = [ApplyProgress(progress(done=400, at=2.0)),
               ApplyProgress(progress(done=200, at=1.0)), ApplyOutcome(outcome())]
    results = {merge_all(order) for order in itertools.permutations(changes)}
    assert len(results) == 1


# --- progress throttle -------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_buffer_keeps_the_newest_report_per_job_and_the_highest_sequence():
    clock = Clock()
    buf = ProgressBuffer(interval=1.0, clock=clock)
    assert buf.due_in() is None and not buf.dirty
    buf.offer(1, progress(done=100, at=1.0))
    assert buf.due_in() == 0  # the first report after a quiet spell goes out at once
    taken, seq = buf.take()
    assert (len(taken), seq) == (1, 1)
    for i in range(2, 52):  # a burst of 50 reports
        buf.offer(i, progress(done=i * 10, at=float(i)))
    buf.offer(52, progress(job="b:2", done=5, at=1.0))
    buf.offer(53, None)  # unreadable: its position still counts
    assert buf.due_in() == pytest.approx(1.0)
    clock.now += 0.4
    assert buf.due_in() == pytest.approx(0.6)
    clock.now += 0.6
    taken, seq = buf.take()
    assert seq == 53
    assert sorted((p.job_id, p.downloaded_size) for p in taken) == [("b:1", 510), ("b:2", 5)]
    assert buf.due_in() is None


def test_progress_buffer_ignores_a_late_older_report():
    buf = ProgressBuffer(interval=1.0, clock=Clock())
    buf.offer(5, progress(done=500, at=5.0))
    buf.offer(6, progress(done=100, at=1.0))
    taken, seq = buf.take()
    assert [p.downloaded_size for p in taken] == [500] and seq == 6


def test_of_two_reports_alike_in_time_and_bytes_the_later_one_counts():
    """A flood wait reported right after the last bytes: same instant, same bytes, and
    the state that came last is the one that holds."""
    buf = ProgressBuffer(interval=1.0, clock=Clock())
    buf.offer(1, progress(done=500, at=5.0))
    buf.offer(2, progress(done=500, at=5.0, state="waiting", wait_seconds=30))
    taken, _ = buf.take()
    assert [p.state for p in taken] == ["waiting"]
    # ...and in the read model, the same report again is no step back
    row = ApplyProgress(progress(done=500, at=5.0)).merge(None)
    assert ApplyProgress(progress(done=500, at=5.0, state="waiting",
                                  wait_seconds=30)).merge(row) is not None


# --- settings ----------------------------------------------------------------------------


def test_the_flush_interval_is_set_by_its_own_prefixed_variable_only(monkeypatch):
    from tgdl.projector.settings import ProjectorSettings

    monkeypatch.setenv("PROGRESS_INTERVAL", "7")  # no TGDL_ prefix: not ours
    monkeypatch.setenv("TGDL_PROGRESS_INTERVAL", "8")  # the downloaders' report pace
    assert ProjectorSettings().progress_interval == 1.0
    monkeypatch.setenv("TGDL_PROGRESS_FLUSH_INTERVAL", "3")
    assert ProjectorSettings().progress_interval == 3.0
    assert ProjectorSettings(progress_interval=0.05).progress_interval == 0.05


def test_pause_marks_the_stopped_files_and_resume_puts_them_back_in_line():
    paused = fold_event(BatchPaused(batch_id="b", at=AT, stopped=[2, 3]))
    assert paused == [UpdateFile("b", 2, {"status": "paused"}),
                      UpdateFile("b", 3, {"status": "paused"}),
                      UpdateBatch("b", {"status": "paused", "updated_at": AT})]
    resumed = fold_event(BatchResumed(batch_id="b", at=later(1), resumed=[2, 3]))
    assert resumed == [UpdateFile("b", 2, {"status": "pending"}),
                       UpdateFile("b", 3, {"status": "pending"}),
                       UpdateBatch("b", {"status": "in_progress", "updated_at": later(1)})]


def test_a_new_max_concurrent_is_recorded_on_the_batch():
    changes = fold_event(ConcurrencyChanged(batch_id="b", at=AT, max_concurrent=5,
                                            previous=2))
    assert changes == [UpdateBatch("b", {"max_concurrent": 5, "updated_at": AT})]


def test_the_priority_is_recorded_at_start_and_when_it_changes():
    started = BatchStarted(batch_id="b", at=AT, kind="batch", max_concurrent=2, force=False,
                           requested_ids=[1], to_download=[entry(1)], already_downloaded=[],
                           failed_to_start=[], priority="low")
    assert fold_event(started)[0].batch.priority == "low"
    changes = fold_event(PriorityChanged(batch_id="b", at=AT, priority="high",
                                         previous="low"))
    assert changes == [UpdateBatch("b", {"priority": "high", "updated_at": AT})]


def test_a_job_stopped_by_a_pause_keeps_the_bytes_its_outcome_reports():
    stopped = outcome("cancelled").model_copy(update={"downloaded_size": 300})
    row = merge_all([*fold_progress(progress(done=250)), *fold_outcome(stopped)])
    assert (row.state, row.downloaded_size) == ("cancelled", 300)
    assert merge_all(fold_outcome(outcome("cancelled"))).downloaded_size == 0


def test_a_transaction_writes_each_batch_and_file_row_once():
    started = fold_event(BatchStarted(
        batch_id="b", at=AT, kind="batch", max_concurrent=1, force=False, requested_ids=[1, 2],
        to_download=[entry(1), entry(2)], already_downloaded=[], failed_to_start=[]))
    permit = fold_event(PermitGranted(batch_id="b", at=AT, message_id=1, job_id="b:1"))
    dispatched = fold_event(JobDispatched(batch_id="b", at=AT, message_id=1, job_id="b:1",
                                          attached=False))
    [insert] = coalesce([*started, *permit, *dispatched])
    assert [(f.status, f.job_id) for f in insert.files] == [("queued", "b:1"), ("pending", None)]

    later = [UpdateFile("b", 2, {"status": "queued", "job_id": "b:2"}),
             UpdateBatch("b", {"max_concurrent": 3}), UpdateFile("b", 2, {"job_id": "x"}),
             UpdateBatch("b", {"status": "paused"})]
    assert coalesce(later) == [UpdateFile("b", 2, {"status": "queued", "job_id": "x"}),
                               UpdateBatch("b", {"max_concurrent": 3, "status": "paused"})]
    # a cancel selects rows by their status: what follows it stays after it
    around = [UpdateFile("b", 2, {"status": "queued"}), CancelFiles("b", (2,)),
              UpdateFile("b", 2, {"status": "pending"})]
    assert coalesce(around) == around
