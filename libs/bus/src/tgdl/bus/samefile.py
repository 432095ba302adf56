"""One download per Telegram file: the files bucket says which job is fetching a file
(`FileLocation.file_key`) and, once it is complete, where it is; a record names a usable
copy only while that file is really on disk, whole (`complete_copy`); another message
gets that copy through `link_or_copy`. The downloader links when a job runs, the
orchestrator already when a batch starts.

A job whose file another job is fetching waits for it and then links to the result; the
fetching job refreshes its record while it runs, so a record nobody refreshes any more
(its downloader died) is taken over. All writes but `complete` are compare-and-set on the
entry's revision, so two jobs never both believe they fetch the same file.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from pathlib import Path, PurePosixPath
from typing import Literal

from nats.js import JetStreamContext
from nats.js.errors import BadRequestError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from tgdl.bus.eventlog import WRONG_LAST_SEQUENCE
from tgdl.contracts.jobs import FileRecord
from tgdl.contracts.paths import PART_SUFFIX, part_path, parts_path
from tgdl.contracts.subjects import Names


class FileRecords:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext, names: Names) -> FileRecords:
        return cls(await js.key_value(names.files_bucket))

    async def get(self, key: str) -> tuple[FileRecord, int] | None:
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        return FileRecord.model_validate_json(entry.value), entry.revision

    async def claim(self, key: str, record: FileRecord, revision: int | None) -> int | None:
        """Write `record` if the entry is still at `revision` (None: absent); returns the
        new revision, or None when another writer came first (look again)."""
        data = record.model_dump_json().encode()
        try:
            if revision is None:
                return await self.kv.create(key, data)
            return await self.kv.update(key, data, last=revision)
        except KeyWrongLastSequenceError:
            return None
        except BadRequestError as exc:  # a stale update, as nats-py sometimes reports it
            if getattr(exc, "err_code", None) != WRONG_LAST_SEQUENCE:
                raise
            return None

    async def complete(self, key: str, record: FileRecord) -> None:
        """The file is stored at `record.relative_path`: later jobs link to it."""
        await self.kv.put(key, record.model_dump_json().encode())

    async def release(self, key: str, job_id: str) -> None:
        """The job stops fetching without a complete file: forget its record, unless
        another job's record replaced it meanwhile."""
        while (current := await self.get(key)) is not None:
            record, revision = current
            if record.job_id != job_id or record.relative_path is not None:
                return
            try:
                await self.kv.delete(key, last=revision)
                return
            except (KeyWrongLastSequenceError, BadRequestError) as exc:
                if getattr(exc, "err_code", WRONG_LAST_SEQUENCE) != WRONG_LAST_SEQUENCE:
                    raise


# --- a complete copy, and giving it to another message -------------------------------------


def usable_source(relative: str) -> bool:
    """A recorded path is only ever one we wrote; still, never follow one out of the
    media root."""
    path = PurePosixPath(relative)
    return not path.is_absolute() and ".." not in path.parts and bool(path.parts)


def copy_size(media_root: Path, relative: str) -> int | None:
    """The size of the finished file a record names (None: absent, a symlink, or a path
    out of the media root). Blocking: a stat."""
    if not usable_source(relative):
        return None
    source = media_root / relative
    try:
        return None if source.is_symlink() else source.stat().st_size
    except OSError:
        return None


def complete_copy(record: FileRecord | None, own_path: str, size: int | None,
                  source_size: int | None) -> bool:
    """The record names a whole copy of the file elsewhere than `own_path` (the message's
    own, whose loss means fetching again): a record alone is never trusted, the file it
    names must be on disk (`source_size`, from `copy_size`) at the file's `size`."""
    if record is None or record.relative_path is None:
        return False
    expected = size if size is not None else record.size
    return (record.relative_path != own_path and usable_source(record.relative_path)
            and source_size is not None and source_size == expected)


# Why os.link may refuse where a copy works: another file system (EXDEV), one without hard
# links (EPERM, ENOTSUP on some network and FAT file systems), too many links (EMLINK).
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP,
            errno.EACCES}


def link_or_copy(source: Path, final: Path) -> Literal["hard_link", "copy"]:
    """Give `final` the finished file at `source`: a hard link (no bytes copied, the same
    inode), or a copy where links are impossible. Like a download, it appears under its
    final name only complete (made under a .part name, fsynced, renamed); `source` is
    never written, so neither name can ever see the other change. An earlier, unfinished
    download of `final` is then removed (blocking: run it in a thread)."""
    if source.is_symlink() or not source.is_file():
        raise FileNotFoundError(f"{source} is not a finished file")
    final.parent.mkdir(parents=True, exist_ok=True)
    temp = final.with_name(final.name + ".link" + PART_SUFFIX)
    temp.unlink(missing_ok=True)
    how: Literal["hard_link", "copy"] = "hard_link"
    try:
        os.link(source, temp, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in _NO_LINK:
            raise
        how = "copy"
        try:
            with source.open("rb") as src, open(temp, "xb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
                dst.flush()
                os.fsync(dst.fileno())
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
    os.replace(temp, final)
    dir_fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    discard_partial(final)
    return how


def discard_partial(final: Path) -> None:
    """`final` is whole: the .part file and sidecar of an earlier download of it (say, of
    a paused batch) are of no more use, unless a download writes them right now (it holds
    the .part file's lock): that one ends with the same bytes under the same name."""
    part = part_path(final)
    try:
        fd: int | None = os.open(part, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        fd = None
    except OSError:  # not a file a download could lock (a symlink): only a name to remove
        fd = None
    try:
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return
        part.unlink(missing_ok=True)
        parts_path(final).unlink(missing_ok=True)
    finally:
        if fd is not None:
            os.close(fd)
