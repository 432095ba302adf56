"""One download per Telegram file: the decision, and how a message gets the file another
message already has (a hard link, or a copy where links are impossible)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from tgdl.bus.samefile import discard_partial, link_or_copy
from tgdl.contracts.catalog import CatalogEntry, FileLocation, MediaKind
from tgdl.contracts.jobs import DownloadJob, FileRecord
from tgdl.contracts.paths import part_path, parts_path
from tgdl.db.readmodel import file_status
from tgdl.downloader.files import open_exclusive
from tgdl.downloader.samefile import Fetch, LinkTo, WaitFor, choose

OWN = "documents/9_1009_a.pdf"


def job(force: bool = False, job_id: str = "b:9") -> DownloadJob:
    entry = CatalogEntry(message_id=9, chat="c", telegram_message_id=1009,
                         media_kind=MediaKind.document, file_name="a.pdf", size=100,
                         location=FileLocation(kind="document", id=5, size=100))
    return DownloadJob(job_id=job_id, entry=entry, force=force)


DONE = FileRecord(job_id="b:5", message_id=5, relative_path="documents/5_1005_a.pdf",
                  size=100)
BUSY = FileRecord(job_id="b:5", message_id=5)


def test_forwards_share_the_files_key_whatever_message_carries_it():
    a = FileLocation(kind="document", id=5, size=100)
    assert a.file_key == FileLocation(kind="document", id=5, size=100, dc_id=2).file_key
    assert a.file_key != FileLocation(kind="photo", id=5, size=100).file_key


@pytest.mark.parametrize(("record", "source_size", "gone", "force", "expected"), [
    (None, None, False, False, Fetch()),  # nobody has it: fetch it
    (DONE, 100, False, False, LinkTo(DONE.relative_path, 5)),  # complete: link
    (DONE, None, False, False, Fetch()),  # its file was deleted: fetch again
    (DONE, 99, False, False, Fetch()),  # ... or is not the whole file
    (DONE, 100, False, True, Fetch()),  # force: fresh bytes
    (DONE.model_copy(update={"relative_path": OWN}), None, False, False, Fetch()),  # ours, gone
    (DONE.model_copy(update={"relative_path": "../x"}), 100, False, False, Fetch()),
    (DONE.model_copy(update={"relative_path": "/etc/x"}), 100, False, False, Fetch()),
    (BUSY, None, False, False, WaitFor("b:5")),  # being fetched: wait, then link
    (BUSY, None, False, True, WaitFor("b:5")),  # force too: that fetch is fresh
    (BUSY, None, True, False, Fetch()),  # its downloader died: take it over
    (BUSY.model_copy(update={"job_id": "b:9"}), None, False, False, Fetch()),  # ours: resume
])
def test_the_decision(record, source_size, gone, force, expected):
    assert choose(job(force), OWN, record, source_size, gone) == expected


def test_with_force_a_download_waited_for_is_fresh_enough_to_link():
    assert choose(job(force=True), OWN, DONE, 100, False, waited_for="b:5") == LinkTo(
        DONE.relative_path, 5)
    assert choose(job(force=True), OWN, DONE, 100, False, waited_for="b:4") == Fetch()


def test_a_link_is_the_same_inode_and_appears_whole(tmp_path: Path):
    source = tmp_path / "documents" / "5_a.pdf"
    source.parent.mkdir()
    source.write_bytes(b"x" * 100)
    final = tmp_path / "other" / "9_a.pdf"
    final.parent.mkdir()
    part_path(final).write_bytes(b"old")  # an earlier, unfinished download's
    parts_path(final).write_text("tgdl-parts 1 size=100 part=64\n0\n")
    assert link_or_copy(source, final) == "hard_link"
    assert final.stat().st_ino == source.stat().st_ino
    assert final.read_bytes() == b"x" * 100
    assert [p.name for p in final.parent.iterdir()] == ["9_a.pdf"]  # whole: no partial left
    # a stale file at the final name is replaced, never written into
    final.unlink()
    final.write_bytes(b"stale")
    link_or_copy(source, final)
    assert final.read_bytes() == b"x" * 100 and source.read_bytes() == b"x" * 100


def test_a_partial_file_a_download_is_writing_is_left_to_it(tmp_path: Path):
    source = tmp_path / "5_a.pdf"
    source.write_bytes(b"x" * 100)
    final = tmp_path / "9_a.pdf"
    writer = open_exclusive(part_path(final))  # the lock a running download holds
    try:
        parts_path(final).write_text("tgdl-parts 1 size=100 part=64\n")
        link_or_copy(source, final)
        assert part_path(final).exists() and parts_path(final).exists()
    finally:
        os.close(writer)
    discard_partial(final)  # once the writer has let go
    assert sorted(p.name for p in tmp_path.iterdir()) == ["5_a.pdf", "9_a.pdf"]


@pytest.mark.parametrize("refusal", [errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP])
def test_where_links_are_impossible_it_copies(tmp_path: Path, monkeypatch, refusal: int):
    source = tmp_path / "5_a.pdf"
    source.write_bytes(os.urandom(3 * 2**20 + 7))

    def no_links(*args, **kwargs):
        raise OSError(refusal, os.strerror(refusal))
    monkeypatch.setattr(os, "link", no_links)
    final = tmp_path / "sub" / "9_a.pdf"
    assert link_or_copy(source, final) == "copy"
    assert final.read_bytes() == source.read_bytes()
    assert final.stat().st_ino != source.stat().st_ino
    assert [p.name for p in final.parent.iterdir()] == ["9_a.pdf"]  # no temporary left


def test_other_failures_are_not_hidden_by_a_copy(tmp_path: Path, monkeypatch):
    source = tmp_path / "5_a.pdf"
    source.write_bytes(b"x")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "no space")
    monkeypatch.setattr(os, "link", full)
    with pytest.raises(OSError):
        link_or_copy(source, tmp_path / "9_a.pdf")
    with pytest.raises(FileNotFoundError):  # a missing or symlinked source is no source
        link_or_copy(tmp_path / "gone", tmp_path / "9_b.pdf")
    (tmp_path / "link").symlink_to(source)
    with pytest.raises(FileNotFoundError):
        link_or_copy(tmp_path / "link", tmp_path / "9_c.pdf")


def _file(**values) -> dict:
    return {"message_id": 9, "status": "completed", "relative_path": OWN,
            "file_path": f"/m/{OWN}", "total_size": 100, "already_downloaded": False,
            "same_file_as": None, "error": None, "detail": None, "suggestion": None, **values}


def test_status_says_why_a_file_was_already_downloaded():
    linked = file_status(_file(same_file_as=5), None)
    assert (linked.already_downloaded, linked.reason, linked.same_file_as) == (
        True, "same_file", 5)
    on_disk = file_status(_file(already_downloaded=True), None)
    assert (on_disk.already_downloaded, on_disk.reason, on_disk.same_file_as) == (
        True, "file_exists", None)
    fetched = file_status(_file(), None)
    assert (fetched.already_downloaded, fetched.reason) == (None, None)


def test_a_linked_outcome_reaches_the_batch_log_and_the_read_model():
    from datetime import UTC, datetime

    from tgdl.contracts.events import FileCompleted
    from tgdl.contracts.jobs import DownloadOutcome
    from tgdl.contracts.status import OutcomeStatus
    from tgdl.orchestrator.batch import Start, decide, fold, initial_state
    from tgdl.orchestrator.react import Decide, react_to_outcome
    from tgdl.projector.fold import ApplyOutcome, UpdateFile, fold_event

    at = datetime(2026, 1, 1, tzinfo=UTC)
    started = decide(Start(batch_id="b", kind="batch", max_concurrent=1, force=False,
                           requested_ids=[9], to_download=[job().entry], already_downloaded=[],
                           failed_to_start=[], already_downloading=[], at=at), initial_state)
    outcome = DownloadOutcome(job_id="b:9", message_id=9, status=OutcomeStatus.completed,
                              parties=["b"], file_path=f"/m/{OWN}", relative_path=OWN,
                              size=100, at=at, same_file_as=5, link="copy")
    [effect] = react_to_outcome(outcome)
    assert isinstance(effect, Decide)
    completed = decide(effect.command, fold(started))[0]
    assert isinstance(completed, FileCompleted)
    assert (completed.same_file_as, completed.link) == (5, "copy")
    [update, *_] = fold_event(completed)
    assert isinstance(update, UpdateFile) and update.values["same_file_as"] == 5
    assert ApplyOutcome(outcome).merge(None).same_file_as == 5


def test_the_cli_line_of_a_linked_file_names_the_message_it_shares_a_file_with():
    from tgdl.launcher.progress import file_line

    line = file_line({"message_id": 81, "status": "completed", "already_downloaded": True,
                      "reason": "same_file", "same_file_as": 45, "total_size": 1000,
                      "download_url": "/media/photos/81_x.jpg"})
    assert "#81 completed (the same file as #45, linked)" in line
