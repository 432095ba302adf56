"""One writer per .part file: the second is refused and leaves the bytes alone, a symlink
is never followed, and the final rename is fenced by the lease."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tgdl.contracts.catalog import CatalogEntry, MediaKind
from tgdl.contracts.jobs import DownloadJob, Lease
from tgdl.downloader.files import PartBusy, PartFile, PartWriter, part_path, parts_path
from tgdl.downloader.worker import Retry, Running


def test_a_second_writer_is_refused_and_changes_nothing(tmp_path: Path):
    final = tmp_path / "videos" / "1_901_v.mp4"
    first = PartFile(final, 10, 4)
    first.open()
    first.write(0, b"abcd")
    before = (part_path(final).read_bytes(), parts_path(final).read_text())
    second = PartFile(final, 10, 4)
    with pytest.raises(PartBusy):
        second.open()
    assert (part_path(final).read_bytes(), parts_path(final).read_text()) == before
    with pytest.raises(PartBusy):
        PartWriter(final, 0)  # nor may a whole-file write truncate it
    assert part_path(final).read_bytes() == before[0]
    first.write(1, b"efgh")
    first.write(2, b"ij")
    first.commit()
    assert final.read_bytes() == b"abcdefghij"


def test_once_the_writer_is_gone_the_next_one_resumes(tmp_path: Path):
    final = tmp_path / "f.bin"
    first = PartFile(final, 8, 4)
    first.open()
    first.write(0, b"abcd")
    first.close()  # a killed process: the kernel drops its lock
    assert PartFile(final, 8, 4).open() == {0}


def test_a_symlinked_part_is_not_followed(tmp_path: Path):
    final = tmp_path / "f.bin"
    target = tmp_path / "elsewhere"
    target.write_bytes(b"precious")
    os.symlink(target, part_path(final))
    with pytest.raises(OSError):
        PartFile(final, 8, 4).open()
    with pytest.raises(OSError):
        PartWriter(final, 0)
    assert target.read_bytes() == b"precious"


def running(claimed_by: int, now_claimed_by: int | None, job_id: str = "b:1") -> Running:
    entry = CatalogEntry(message_id=1, chat="c", telegram_message_id=1,
                         media_kind=MediaKind.photo, file_name="p.jpg", size=8)
    seen = (Lease(job_id=job_id, parties=["b"], claimed_by=now_claimed_by), 3)
    return Running(DownloadJob(job_id="b:1", entry=entry), seen=seen, copy=claimed_by)


def test_the_rename_is_fenced_by_the_lease_as_last_seen():
    running(7, 7).fence()  # still ours
    with pytest.raises(Retry):
        running(7, 9).fence()  # another copy of the job claimed it
    with pytest.raises(Retry):
        running(7, 7, job_id="b2:1").fence()  # another job has the message now
