"""How file and job rows become what clients see: per-file status, counts, overall
status and the summary sentence (plain rows, no database)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tgdl.contracts.commands import BatchAccepted
from tgdl.contracts.errors import ErrorCode, FileFailure
from tgdl.db.readmodel import (
    batch_status_of,
    batch_summary,
    file_body,
    file_status,
    status_body,
    summary_sentence,
)
from tgdl.gateway.batches import start_message

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def file_row(m: int = 1, status: str = "pending", **extra) -> dict:
    row = {"message_id": m, "status": status, "total_size": 1000, "file_path": None,
           "relative_path": None, "already_downloaded": False, "error": None,
           "detail": None, "suggestion": None}
    return row | extra


def job_row(state: str, **extra) -> dict:
    row = {"state": state, "downloaded_size": 0, "total_size": 1000, "download_speed": None,
           "eta_seconds": None, "wait_seconds": None, "file_path": None,
           "relative_path": None, "error": None, "detail": None, "suggestion": None,
           "hash_verified": None}
    return row | extra


def batch(status: str = "in_progress", total: int = 5) -> dict:
    return {"batch_id": "batch_1", "status": status, "total_files": total,
            "max_concurrent": 3}


def test_a_downloading_file_shows_live_numbers_from_its_job():
    job = job_row("downloading", downloaded_size=450_000, total_size=1_000_000,
                  download_speed=50_000, eta_seconds=11)
    body = file_status(file_row(status="queued"), job)
    assert body.model_dump(exclude_none=True) == {
        "message_id": 1, "status": "downloading", "progress": 45,
        "downloaded_size": 450_000, "total_size": 1_000_000, "download_speed": 50_000,
        "estimated_time_remaining": 11,
    }


@pytest.mark.parametrize("state", ["starting", "retrying"])
def test_starting_and_retrying_jobs_count_as_downloading(state):
    assert file_status(file_row(status="queued"), job_row(state)).status == "downloading"


def test_time_remaining_comes_from_speed_when_the_downloader_gave_none():
    job = job_row("downloading", downloaded_size=400, total_size=1000, download_speed=100)
    assert file_status(file_row(status="queued"), job).estimated_time_remaining == 6


def test_progress_is_rounded_down_and_never_exceeds_100():
    job = job_row("downloading", downloaded_size=999, total_size=1000)
    assert file_status(file_row(status="queued"), job).progress == 99
    job = job_row("downloading", downloaded_size=5, total_size=0)
    assert file_status(file_row(status="queued"), job).progress == 0


def test_a_flood_wait_is_waiting_not_failed():
    job = job_row("waiting", downloaded_size=300, wait_seconds=42)
    body = file_status(file_row(status="queued"), job)
    assert (body.status, body.wait_seconds, body.progress, body.error) == (
        "waiting", 42, 30, None)


def test_a_file_with_a_permit_but_no_running_job_is_queued():
    assert file_status(file_row(status="queued"), None).status == "queued"
    assert file_status(file_row(status="queued"), job_row("queued")).status == "queued"


def test_pending_stays_pending_whatever_its_job_row_says():
    assert file_status(file_row(status="pending"), job_row("downloading")).status == "pending"


def test_the_batch_verdict_wins_over_the_job():
    row = file_row(status="cancelled")
    assert file_status(row, job_row("downloading")).status == "cancelled"
    row = file_row(status="completed", file_path="/m/photos/1.jpg",
                   relative_path="photos/1.jpg")
    body = file_status(row, job_row("failed", error="network_error"))
    assert (body.status, body.progress, body.download_url, body.error) == (
        "completed", 100, "/media/photos/1.jpg", None)


def test_an_attached_job_that_finished_completes_the_file_before_its_event():
    job = job_row("completed", file_path="/m/videos/1.mp4", relative_path="videos/1.mp4",
                  downloaded_size=1000)
    body = file_status(file_row(status="queued"), job)
    assert body.model_dump(exclude_none=True) == {
        "message_id": 1, "status": "completed", "progress": 100,
        "file_path": "/m/videos/1.mp4", "download_url": "/media/videos/1.mp4",
        "total_size": 1000,
    }


def test_a_failed_job_shows_its_error():
    job = job_row("failed", error="retries_exhausted", detail="d", suggestion="s")
    body = file_status(file_row(status="queued"), job)
    assert (body.status, body.error, body.detail, body.suggestion) == (
        "failed", "retries_exhausted", "d", "s")


def test_already_downloaded_files_say_so():
    row = file_row(status="completed", already_downloaded=True, file_path="/m/a.jpg",
                   relative_path="photos/a.jpg")
    assert file_status(row, None).already_downloaded is True
    row["already_downloaded"] = False
    assert file_status(row, None).already_downloaded is None


def test_counts_fold_waiting_into_downloading_and_queued_into_pending():
    files = [
        file_status(file_row(1, "completed", relative_path="photos/1.jpg"), None),
        file_status(file_row(2, "queued"), job_row("downloading")),
        file_status(file_row(3, "queued"), job_row("waiting", wait_seconds=5)),
        file_status(file_row(4, "queued"), None),
        file_status(file_row(5, "pending"), None),
    ]
    status = batch_status_of(batch(), files)
    assert (status.total_files, status.completed, status.downloading, status.failed,
            status.pending, status.cancelled) == (5, 1, 2, 0, 2, 0)
    assert (status.overall_status, status.finished) == ("in_progress", False)
    assert status.summary == (
        "1 of 5 files completed, 1 downloading, 1 paused by a Telegram rate limit, "
        "2 waiting for their turn")
    assert status.max_concurrent == 3


def test_a_batch_nobody_started_on_yet_is_pending():
    files = [file_status(file_row(m), None) for m in (1, 2)]
    status = batch_status_of(batch(total=2), files)
    assert status.overall_status == "pending"
    assert status.summary == "0 of 2 files completed, 2 waiting for their turn"


def test_a_finished_batch_with_some_failures_is_failed_and_says_how_many_completed():
    files = [file_status(file_row(m, "completed", relative_path=f"p/{m}"), None)
             for m in range(18)]
    files += [file_status(file_row(m, "failed", error="message_not_found"), None)
              for m in (18, 19)]
    status = batch_status_of(batch("failed", total=20), files)
    assert (status.overall_status, status.finished, status.completed, status.failed) == (
        "failed", True, 18, 2)
    assert status.summary == "18 of 20 files completed, 2 failed"


def test_a_cancelled_batch_counts_what_finished_and_what_stopped():
    files = [file_status(file_row(m, "completed", relative_path=f"p/{m}"), None)
             for m in (1, 2)]
    files += [file_status(file_row(m, "cancelled"), None) for m in (3, 4, 5)]
    status = batch_status_of(batch("cancelled"), files)
    assert (status.overall_status, status.finished, status.cancelled) == (
        "cancelled", True, 3)
    assert status.summary == "Cancelled: 2 files completed, 3 stopped"


def test_a_completed_batch_of_one_file():
    files = [file_status(file_row(1, "completed", relative_path="p/1"), None)]
    status = batch_status_of(batch("completed", total=1), files)
    assert (status.overall_status, status.finished) == ("completed", True)
    assert status.summary == "1 of 1 file completed"


def test_summary_mentions_one_file_waiting_for_its_turn():
    counts = {"completed": 3, "downloading": 1, "queued": 1}
    assert summary_sentence("in_progress", 5, counts) == (
        "3 of 5 files completed, 1 downloading, 1 waiting for its turn")


def test_the_wire_form_leaves_out_what_does_not_apply_but_never_a_live_number():
    starting = file_status(file_row(status="queued"), job_row("starting"))
    assert file_body(starting) == {
        "message_id": 1, "status": "downloading", "progress": 0, "downloaded_size": 0,
        "total_size": 1000, "download_speed": 0, "estimated_time_remaining": None,
    }
    waiting = file_body(file_status(file_row(status="queued"), job_row("waiting")))
    assert waiting["wait_seconds"] is None and "estimated_time_remaining" in waiting
    done = file_status(file_row(status="completed", relative_path="p/1"), None)
    assert set(file_body(done)) == {"message_id", "status", "progress", "total_size",
                                    "download_url"}
    body = status_body(batch_status_of(batch(total=1), [done]))
    assert body["files"] == [file_body(done)] and body["overall_status"] == "in_progress"


def test_a_paused_batch_shows_its_stopped_files_paused_and_says_so():
    files = [
        file_status(file_row(1, "completed", relative_path="p/1"), None),
        # its job ended as cancelled when the pause stopped it: the file is paused, not
        # cancelled, shows the bytes its .part kept and nothing live
        file_status(file_row(2, "paused"), job_row("cancelled", error="cancelled",
                                                   downloaded_size=300)),
        file_status(file_row(3, "paused"), None),
        file_status(file_row(4, "pending"), None),
    ]
    status = batch_status_of(batch("paused", total=4), files)
    assert [f.status for f in status.files] == ["completed", "paused", "paused", "pending"]
    assert (status.overall_status, status.finished) == ("paused", False)
    assert (status.completed, status.paused, status.pending, status.downloading,
            status.cancelled) == (1, 2, 1, 0, 0)
    assert status.summary == ("Paused: 1 of 4 files completed, 2 paused, "
                              "1 waiting for its turn")
    assert status_body(status)["files"][1] == {"message_id": 2, "status": "paused",
                                               "progress": 30, "downloaded_size": 300,
                                               "total_size": 1000}
    assert status_body(status)["files"][2] == {"message_id": 3, "status": "paused",
                                               "progress": 0, "total_size": 1000}


def listed(status: str, total: int) -> dict:
    """A batch row as the batch list reads it."""
    return batch(status, total) | {"kind": "batch", "created_at": NOW, "finished_at": None,
                                   "force": False, "priority": "normal"}


def test_the_batch_list_counts_the_bytes_on_disk_and_the_running_files_speed():
    files = [
        file_status(file_row(1, "completed", total_size=4000, relative_path="p/1"), None),
        file_status(file_row(2, "queued", total_size=2000),
                    job_row("downloading", downloaded_size=500, total_size=2000,
                            download_speed=250)),
        file_status(file_row(3, "paused", total_size=2000),
                    job_row("cancelled", downloaded_size=700)),  # kept on disk
        file_status(file_row(4, "failed", total_size=1000, error="message_deleted"), None),
        file_status(file_row(5, "pending", total_size=1000), None),
    ]
    summary = batch_summary(listed("in_progress", 5), files)
    assert (summary.downloaded_size, summary.total_size, summary.download_speed) == (
        4000 + 500 + 700, 10_000, 250)
    assert summary.progress == 52  # of the bytes: a failed file counts as none


def test_while_a_size_is_unknown_the_batch_list_averages_its_files_progress():
    files = [
        file_status(file_row(1, "completed", total_size=None, relative_path="p/1"), None),
        file_status(file_row(2, "queued", total_size=None),
                    job_row("downloading", downloaded_size=250, total_size=1000)),
        file_status(file_row(3, "pending", total_size=1000), None),
    ]
    summary = batch_summary(listed("in_progress", 3), files)
    assert summary.total_size is None
    assert summary.progress == 41  # (100 + 25 + 0) / 3, rounded down
    done = [file_status(file_row(m, "completed", total_size=None, relative_path=f"p/{m}"),
                        None) for m in (1, 2)]
    assert batch_summary(listed("completed", 2), done).progress == 100
    assert batch_summary(listed("pending", 0), []).progress == 0


def test_a_completed_file_says_whether_its_bytes_matched_telegrams_hashes():
    fetched = file_status(file_row(1, "completed", relative_path="photos/1.jpg"),
                          job_row("completed", hash_verified=True))
    assert fetched.hash_verified is True
    unverified = file_status(file_row(2, "queued"), job_row("completed", hash_verified=False,
                                                             relative_path="photos/2.jpg"))
    assert (unverified.status, unverified.hash_verified) == ("completed", False)
    already = file_status(file_row(3, "completed", already_downloaded=True), None)
    assert already.hash_verified is None and already.already_downloaded


def test_the_start_message_counts_files_in_plain_words():
    def accepted(requested: list[int], started: list[int], done: list[int]) -> BatchAccepted:
        return BatchAccepted(batch_id="b", requested_ids=requested, started=started,
                             already_downloaded=done, already_downloading=[],
                             failed_to_start=[])

    assert start_message(accepted([1], [], [1])) == (
        "Nothing to download among 1 file: 1 already downloaded")
    assert start_message(accepted([1, 2, 3], [1, 2, 3], [])) == (
        "Batch download started with 3 files: 3 to download")
    missing = FileFailure.of_message(9, ErrorCode.message_not_found, "no message with id 9")
    assert start_message(BatchAccepted(
        batch_id="b", requested_ids=[9], started=[], already_downloaded=[],
        already_downloading=[], failed_to_start=[missing])) == (
        "Nothing to download among 1 file: 1 could not start")
