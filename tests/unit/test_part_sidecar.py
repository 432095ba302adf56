"""The .part file of parallel parts: only parts recorded in the fsynced sidecar are
trusted, whatever else the .part file holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from tgdl.downloader.files import (
    PartFile,
    SizeMismatch,
    discard_part,
    kept_bytes,
    part_path,
    parts_path,
)

P = 4096  # a small part size keeps the files small


def opened(final: Path, size: int) -> PartFile:
    file = PartFile(final, size, P)
    file.open()
    return file


def test_parts_written_out_of_order_commit_to_the_exact_bytes(tmp_path: Path):
    final = tmp_path / "f.bin"
    data = bytes(range(256)) * 40  # 10240 bytes: parts of 4096, 4096, 2048
    file = opened(final, len(data))
    assert part_path(final).stat().st_size == len(data)  # preallocated
    for index in (2, 0, 1):
        offset, length = file.span(index)
        file.write(index, data[offset:offset + length])
    file.commit()
    assert final.read_bytes() == data
    assert not part_path(final).exists() and not parts_path(final).exists()


def test_a_resume_trusts_recorded_parts_only_and_ignores_a_torn_record(tmp_path: Path):
    final = tmp_path / "f.bin"
    file = opened(final, 3 * P)
    file.write(1, b"b" * P)
    file.close()
    with parts_path(final).open("a") as sidecar:
        sidecar.write("2")  # torn: the newline never made it
    with part_path(final).open("r+b") as part:
        part.write(b"a" * P)  # bytes of part 0, never recorded

    again = PartFile(final, 3 * P, P)
    assert again.open() == {1}
    assert again.missing() == [0, 2]
    again.close()


def test_a_sidecar_of_another_size_or_none_at_all_starts_over(tmp_path: Path):
    final = tmp_path / "f.bin"
    file = opened(final, 3 * P)
    file.write(0, b"a" * P)
    file.close()
    again = PartFile(final, 4 * P, P)
    assert again.open() == set()  # the message now has another file
    again.close()  # (an open PartFile holds the .part's lock)

    parts_path(final).unlink()
    bare = PartFile(final, 4 * P, P)
    assert bare.open() == set()  # a .part without a sidecar: nothing in it is trusted
    bare.close()
    discard_part(final)
    assert not part_path(final).exists() and not parts_path(final).exists()


def test_a_part_of_the_wrong_length_is_refused(tmp_path: Path):
    file = opened(tmp_path / "f.bin", 2 * P)
    with pytest.raises(SizeMismatch):
        file.write(0, b"x" * (P - 1))
    with pytest.raises(SizeMismatch):
        file.commit()  # parts are missing
    file.close()


def test_a_stopped_download_keeps_the_bytes_of_its_recorded_parts(tmp_path: Path):
    final = tmp_path / "f.bin"
    data = bytes(range(256)) * 40  # parts of 4096, 4096, 2048
    file = opened(final, len(data))
    for index in (2, 0):  # the short last part and the first
        offset, length = file.span(index)
        file.write(index, data[offset:offset + length])
    file.close()
    assert kept_bytes(final, len(data), P) == 4096 + 2048
    parts_path(final).unlink()  # a .part without its sidecar is not trusted
    assert kept_bytes(final, len(data), P) == 0
    assert kept_bytes(tmp_path / "never.bin", 10, P) == 0
