"""Files on disk: ``<name>.part`` while downloading, the final name only when complete.

A finished file never exists half-written under its final name: bytes go to the .part
file, which is size-checked, fsynced and renamed atomically (then the folder is fsynced
so the rename itself survives a power cut).
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from tgdl.contracts.paths import part_path, parts_path


def is_complete(final: Path, size: int | None) -> bool:
    try:
        return size is not None and final.stat().st_size == size
    except FileNotFoundError:
        return False


class PartBusy(OSError):
    """Another writer holds the .part file (a copy of the job still running elsewhere on
    this media folder): this one must not touch it; the job goes back to the queue."""


def open_exclusive(part: Path) -> int:
    """Open the .part file for writing, never through a symlink, and take its exclusive
    lock (held until the descriptor closes, released by the kernel if the process dies)."""
    fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise PartBusy(f"{part.name} is being written by another download") from None
    except BaseException:
        os.close(fd)
        raise
    try:  # locked, but renamed away meanwhile (that writer finished): not ours to write
        renamed = os.stat(part, follow_symlinks=False).st_ino != os.fstat(fd).st_ino
    except FileNotFoundError:
        renamed = True
    if renamed:
        os.close(fd)
        raise PartBusy(f"{part.name} was just finished by another download")
    return fd


def free_bytes(folder: Path) -> int:
    """Free space for an unprivileged writer on the disk of `folder` (or of its nearest
    existing parent: the media folder may not exist before the first download)."""
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            return shutil.disk_usage(candidate).free
    return shutil.disk_usage(".").free


class PartWriter:
    """Appends to a .part file from a resume offset; bounded memory (one chunk at a time)."""

    def __init__(self, final: Path, offset: int) -> None:
        self.final = final
        self.part = part_path(final)
        self.part.parent.mkdir(parents=True, exist_ok=True)
        self._file = os.fdopen(open_exclusive(self.part), "r+b")
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
        os.replace(self.part, self.final)  # still locked: nobody reset it in between
        self.close()
        dir_fd = os.open(self.final.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def store_whole(final: Path, data: bytes) -> None:
    """A file that came in one part: its .part written, fsynced and renamed, the folder
    fsynced (blocking: run it in a thread). One part leaves nothing to resume, so it
    needs no parts sidecar (one left by an earlier attempt goes)."""
    writer = PartWriter(final, 0)
    try:
        writer.write(data)
        writer.commit(len(data))
    finally:
        writer.close()
    parts_path(final).unlink(missing_ok=True)


class SizeMismatch(Exception):
    def __init__(self, expected: int, actual: int) -> None:
        super().__init__(f"expected {expected} bytes, got {actual}")
        self.expected = expected
        self.actual = actual


def discard_part(final: Path) -> None:
    part_path(final).unlink(missing_ok=True)
    parts_path(final).unlink(missing_ok=True)


# --- parallel parts: written at their offsets, finished ones recorded in a sidecar ------------

_PARTS_HEADER = "tgdl-parts 1 size={size} part={part}\n"


def recorded_parts(final: Path) -> set[int]:
    """Indices the sidecar lists as finished (for looking at a download from outside)."""
    try:
        lines = parts_path(final).read_text(errors="replace").split("\n")[1:-1]
    except FileNotFoundError:
        return set()
    return {int(i) for line in lines if (i := line.removesuffix("v")).isdigit()}


def kept_bytes(final: Path, size: int | None, part_size: int) -> int:
    """The bytes a stopped download keeps for its resume: the finished parts its sidecar
    lists (a .part without one is not trusted, so it keeps none)."""
    if not size:
        return 0
    count = -(-size // part_size)
    return sum(min(part_size, size - i * part_size) for i in recorded_parts(final)
               if i < count)


class PartFile:
    """A preallocated .part file filled part by part, in any order.

    A part counts as finished only once its bytes are fsynced *and* its index is appended
    (fsynced) to the sidecar, so after kill -9 the sidecar never names a hole: a resume
    fetches exactly the parts it does not list. A sidecar written for another size or
    part size, or a .part without one, is not trusted: the download starts over.
    """

    def __init__(self, final: Path, size: int, part_size: int) -> None:
        self.final = final
        self.part = part_path(final)
        self.sidecar = parts_path(final)
        self.size = size
        self.part_size = part_size
        self.count = -(-size // part_size)
        self.done: set[int] = set()
        self.verified: set[int] = set()  # parts checked against Telegram's hashes
        self._fd: int | None = None
        self._log: int | None = None

    def open(self) -> set[int]:
        """Open (or start) the .part file; return the indices of finished parts."""
        self.part.parent.mkdir(parents=True, exist_ok=True)
        header = _PARTS_HEADER.format(size=self.size, part=self.part_size)
        self.verified = set()
        existed = os.path.lexists(self.part)
        # Locked before anything is read or reset: a second writer leaves both files alone.
        self._fd = open_exclusive(self.part)
        try:
            self._start(header, existed)
        except BaseException:
            self.close()
            raise
        return set(self.done)

    def _start(self, header: str, existed: bool) -> None:
        assert self._fd is not None
        self.done = self._recorded(header) if existed else set()
        if not self.done:
            fd = os.open(self.sidecar, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW,
                         0o644)
            try:
                os.write(fd, header.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        if not self.done:
            os.ftruncate(self._fd, 0)  # nothing in it is trusted
        if os.fstat(self._fd).st_size != self.size:
            os.ftruncate(self._fd, self.size)
            try:  # reserve the blocks now: a full disk fails here, not at part 900
                os.posix_fallocate(self._fd, 0, self.size)
            except (AttributeError, OSError):
                pass
        self._log = os.open(self.sidecar, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)

    def _recorded(self, header: str) -> set[int]:
        try:
            text = self.sidecar.read_text(errors="replace")
        except FileNotFoundError:
            return set()
        if not text.startswith(header):
            return set()
        done = set()
        for line in text[len(header):].split("\n")[:-1]:  # a torn last line is ignored
            index = line.removesuffix("v")  # "v": the part matched Telegram's hashes
            if index.isdigit() and int(index) < self.count:
                done.add(int(index))
                if line.endswith("v"):
                    self.verified.add(int(index))
        return done

    def missing(self) -> list[int]:
        return [i for i in range(self.count) if i not in self.done]

    def span(self, index: int) -> tuple[int, int]:
        """(offset, length) of part `index`."""
        offset = index * self.part_size
        return offset, min(self.part_size, self.size - offset)

    def bytes_done(self) -> int:
        return sum(self.span(i)[1] for i in self.done)

    def all_verified(self) -> bool:
        return self.count > 0 and len(self.verified) == self.count

    def write(self, index: int, data: bytes, verified: bool = False) -> None:
        """Store part `index` durably, then record it (blocking: run it in a thread)."""
        offset, length = self.span(index)
        if len(data) != length:
            raise SizeMismatch(length, len(data))
        self.put(offset, [data])
        self.record(index, verified)

    def put(self, offset: int, buffers: Sequence[bytes | bytearray | memoryview]) -> None:
        """Write `buffers` at `offset`, a piece of a part as it arrives (blocking). Not
        durable and not recorded: until `record`, a resume fetches the part again."""
        assert self._fd is not None
        views = [view for b in buffers if (view := memoryview(b).cast("B"))]
        end = offset + sum(len(view) for view in views)
        if end > self.size:
            raise SizeMismatch(self.size, end)
        while views:
            written = os.pwritev(self._fd, views, offset)
            offset += written
            while views and written >= len(views[0]):
                written -= len(views.pop(0))
            if written:
                views[0] = views[0][written:]

    def record(self, index: int, verified: bool = False) -> None:
        """Part `index` is all written: make its bytes durable, then record it (blocking)."""
        assert self._fd is not None and self._log is not None
        os.fdatasync(self._fd)
        os.write(self._log, f"{index}{'v' if verified else ''}\n".encode())
        os.fsync(self._log)
        self.done.add(index)
        if verified:
            self.verified.add(index)

    def close(self) -> None:
        for fd in (self._fd, self._log):
            if fd is not None:
                os.close(fd)
        self._fd = self._log = None

    def commit(self) -> None:
        """Every part is there: check the size, fsync, rename, forget the sidecar."""
        assert self._fd is not None
        if self.missing():
            raise SizeMismatch(self.size, self.bytes_done())
        actual = os.fstat(self._fd).st_size
        if actual != self.size:
            raise SizeMismatch(self.size, actual)
        os.fsync(self._fd)
        os.replace(self.part, self.final)  # still locked: nobody reset it in between
        self.close()
        self.sidecar.unlink(missing_ok=True)
        dir_fd = os.open(self.final.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
