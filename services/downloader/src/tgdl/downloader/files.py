"""Files on disk: ``<name>.part`` while downloading, the final name only when complete.

A finished file never exists half-written under its final name: bytes go to the .part
file, which is size-checked, fsynced and renamed atomically (then the folder is fsynced
so the rename itself survives a power cut).
"""

from __future__ import annotations

import os
from pathlib import Path

from tgdl.contracts.paths import PART_SUFFIX


def part_path(final: Path) -> Path:
    return final.with_name(final.name + PART_SUFFIX)


def is_complete(final: Path, size: int | None) -> bool:
    try:
        return size is not None and final.stat().st_size == size
    except FileNotFoundError:
        return False


def resume_offset(part: Path, request_size: int) -> int:
    """Where to continue: the .part length rounded down to the request size (Telegram
    wants aligned offsets; a torn last request is simply fetched again)."""
    try:
        length = part.stat().st_size
    except FileNotFoundError:
        return 0
    return length - length % request_size


class PartWriter:
    """Appends to a .part file from a resume offset; bounded memory (one chunk at a time)."""

    def __init__(self, final: Path, offset: int) -> None:
        self.final = final
        self.part = part_path(final)
        self.part.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.part, os.O_RDWR | os.O_CREAT, 0o644)
        self._file = os.fdopen(fd, "r+b")
        self._file.truncate(offset)
        self._file.seek(offset)
        self.written = offset

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)
        self.written += len(chunk)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def commit(self, expected_size: int) -> None:
        """Verify the size, make the bytes durable and give the file its final name."""
        self._file.flush()
        actual = os.fstat(self._file.fileno()).st_size
        if actual != expected_size:
            self.close()
            raise SizeMismatch(expected_size, actual)
        os.fsync(self._file.fileno())
        self.close()
        os.replace(self.part, self.final)
        dir_fd = os.open(self.final.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class SizeMismatch(Exception):
    def __init__(self, expected: int, actual: int) -> None:
        super().__init__(f"expected {expected} bytes, got {actual}")
        self.expected = expected
        self.actual = actual


def discard_part(final: Path) -> None:
    part_path(final).unlink(missing_ok=True)
