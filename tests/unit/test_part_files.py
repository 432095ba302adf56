"""The .part rules: resume aligned, verify size, rename atomically, nothing half-final."""

from __future__ import annotations

from pathlib import Path

import pytest

from tgdl.downloader.files import (
    PartWriter,
    SizeMismatch,
    discard_part,
    is_complete,
    part_path,
    parts_path,
    store_whole,
)
from tgdl.downloader.meter import Meter

KIB = 1024


def test_writer_resumes_at_offset_and_commits_only_the_right_size(tmp_path: Path):
    final = tmp_path / "photos" / "1_2_a.jpg"
    w = PartWriter(final, 0)
    w.write(b"a" * 10 + b"garbage")
    w.close()
    w = PartWriter(final, 10)  # the torn tail is cut off before appending
    w.write(b"b" * 5)
    assert not final.exists()
    w.commit(15)
    assert final.read_bytes() == b"a" * 10 + b"b" * 5
    assert not part_path(final).exists()
    assert is_complete(final, 15) and not is_complete(final, 16)


def test_short_file_is_never_renamed(tmp_path: Path):
    final = tmp_path / "v.mp4"
    w = PartWriter(final, 0)
    w.write(b"x" * 9)
    with pytest.raises(SizeMismatch):
        w.commit(10)
    assert not final.exists() and part_path(final).stat().st_size == 9
    discard_part(final)
    assert not part_path(final).exists()


def test_a_file_of_one_part_is_stored_whole_without_a_sidecar(tmp_path: Path):
    final = tmp_path / "photos" / "3_4_b.jpg"
    final.parent.mkdir()
    part_path(final).write_bytes(b"torn" * 100)  # an earlier attempt's leftovers
    parts_path(final).write_text("old sidecar\n")
    store_whole(final, b"c" * 1000)
    assert final.read_bytes() == b"c" * 1000
    assert not part_path(final).exists() and not parts_path(final).exists()


def test_meter_reports_window_speed_and_eta():
    m = Meter(total=1000, start=100, now=0.0, window=3.0)
    assert m.speed == 0 and m.eta is None
    m.add(100, 1.0)
    m.add(100, 2.0)
    assert m.speed == 100 and m.eta == 7
    m.restart(60.0)  # a long pause is not slowness
    m.add(200, 61.0)
    assert m.speed == 200 and m.eta == 3  # 500 left at 200 B/s, rounded up
    m.add(500, 62.0)
    assert m.eta == 0


def test_meter_speed_is_the_last_window_not_the_average_since_the_start():
    m = Meter(total=100_000, start=0, now=0.0, window=3.0)
    for t in range(1, 11):  # 100 B/s for ten seconds
        m.add(100, float(t))
    for t in range(11, 14):  # then 1000 B/s
        m.add(1000, float(t))
    assert m.speed == 1000  # (since the start it would be about 300)
    assert m.eta == 96  # 96 000 bytes left at that speed
    assert Meter(total=500, start=500, now=0.0).eta == 0  # resumed whole: nothing left
