"""A file fetched as 1 MiB parts, several at once, each written at its offset.

How many parts of one file are in flight is `parts_for` (by size, like tdl: one part under
1 MiB, up to 8 for large files); how many requests really run at once is further bounded
by the adapter's pool of connections per data center, shared by every file of the account.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tgdl.contracts.errors import ErrorCode
from tgdl.downloader.files import PartFile
from tgdl.downloader.metrics import PARTS_REFETCHED
from tgdl.downloader.telegram.port import PartSource, PermanentError, Range

log = logging.getLogger("tgdl.downloader")
A = TypeVar("A")
B = TypeVar("B")

MiB = 1024 * 1024
# (files smaller than this, parts in flight); larger files get MAX_PARTS
_BY_SIZE = ((1 * MiB, 1), (5 * MiB, 2), (20 * MiB, 4))
MAX_PARTS = 8
MAX_MISMATCHES = 3  # fetches of one part that fail Telegram's hashes before the file fails


@dataclass
class PartStats:
    refetched: int = 0  # parts fetched again because they did not match Telegram's hashes


def matches(data: bytes, offset: int, ranges: list[tuple[int, int, bytes]]) -> bool:
    """Whether the part at `offset` matches every hashed range it holds (hashed in place:
    a slice of a memoryview copies nothing)."""
    view = memoryview(data)
    return all(
        hashlib.sha256(view[start - offset:start - offset + length]).digest() == digest
        for start, length, digest in ranges
    )


def parts_for(size: int, setting: int = 0) -> int:
    """Parts of one file in flight: `setting` if set, else by size."""
    if setting > 0:
        return setting
    return next((n for limit, n in _BY_SIZE if size < limit), MAX_PARTS)


def requests_for(size: int, setting: int, depth: int) -> int:
    """Requests one file keeps asking for at once (the `width` of `fetch_parts`): its
    parts in flight, each with `depth` requests (as many as one connection carries)."""
    return parts_for(size, setting) * depth


async def _both(first: Awaitable[A], second: Awaitable[B]) -> tuple[A, B]:
    """Both at once (the hashes' round trip hides behind the part's); if one fails, the
    other is cancelled and the failure raised."""
    tasks = [asyncio.ensure_future(first), asyncio.ensure_future(second)]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        await asyncio.wait(tasks)
        return tasks[0].result(), tasks[1].result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# Hashing this much takes less than handing it to a thread and back.
INLINE_HASH_BYTES = 128 * 1024


async def fetch_checked(source: PartSource, offset: int, length: int,
                        stats: PartStats) -> tuple[bytes, bool]:
    """One part, checked against Telegram's hashes where it has them (fetched again when
    they do not match); returns its bytes and whether they were checked."""
    for attempt in range(1, MAX_MISMATCHES + 1):
        data, ranges = await _both(source.read(offset, length), source.hashes(offset, length))
        if ranges is None:
            return data, False
        if (matches(data, offset, ranges) if length <= INLINE_HASH_BYTES
                else await asyncio.to_thread(matches, data, offset, ranges)):
            return data, True
        _mismatched(stats, offset, attempt)
    raise _corrupted(offset)


# A part goes to disk piece by piece as it arrives: each of Telegram's hashed ranges
# (128 KiB) once it matches, or, for a file without hashes, what has come once it is
# this much. A part in flight holds about one piece, not 1 MiB.
PIECE_BYTES = 128 * 1024
Piece = tuple[int, list[memoryview], bytes | None]  # (offset, its bytes, SHA-256 to match)


class _Arrived:
    """The bytes of a part received and not yet written, as they came (never joined)."""

    def __init__(self) -> None:
        self.chunks: deque[memoryview] = deque()
        self.size = 0

    def add(self, chunk: bytes) -> None:
        if chunk:
            self.chunks.append(memoryview(chunk).cast("B"))
            self.size += len(chunk)

    def take(self, n: int) -> list[memoryview]:
        """The next `n` bytes (at most `size`)."""
        taken: list[memoryview] = []
        self.size -= n
        while n > 0:
            head = self.chunks[0]
            if len(head) <= n:
                taken.append(self.chunks.popleft())
                n -= len(head)
            else:
                taken.append(head[:n])
                self.chunks[0] = head[n:]
                n = 0
        return taken


def _check_and_put(file: PartFile, pieces: list[Piece]) -> bool:
    """Write each piece that matches its hash, in order; False at the first that does
    not, which is not written (blocking: run it in a thread)."""
    for offset, views, digest in pieces:
        if digest is not None:
            sha = hashlib.sha256()
            for view in views:
                sha.update(view)
            if sha.digest() != digest:
                return False
        file.put(offset, views)
    return True


async def _in_thread(writes: set[asyncio.Future], fn: Callable[..., A], *args) -> A:
    """`fn(*args)` in a thread, shielded: a write once begun completes before the file
    may be closed (`fetch_parts` waits for every one in `writes`)."""
    task = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    writes.add(task)
    task.add_done_callback(writes.discard)
    return await asyncio.shield(task)


async def _stream_part(source: PartSource, file: PartFile, offset: int, length: int,
                       writes: set[asyncio.Future]) -> bool | None:
    """Fetch one part into `file` piece by piece as it arrives, each piece written only
    once it matches Telegram's hash of its range (Telegram's hashes are asked for at the
    same time; pieces wait for them in memory). Returns whether the part was checked,
    None when a piece did not match (the part is not whole on disk then)."""
    hashes = asyncio.ensure_future(source.hashes(offset, length))
    arrived = _Arrived()
    position = offset  # the first byte not yet written
    ranges: deque[Range] | None = None

    def ready(end: bool) -> list[Piece]:
        nonlocal position
        pieces: list[Piece] = []
        if ranges is None:  # no hashes for this file: pieces as they fill up
            if arrived.size >= PIECE_BYTES or (end and arrived.size):
                size = arrived.size
                pieces.append((position, arrived.take(size), None))
                position += size
        else:
            # the file's last range may be announced longer than what is left of it
            while ranges and ranges[0][0] == position and (
                    size := min(ranges[0][1], offset + length - position)) <= arrived.size:
                pieces.append((position, arrived.take(size), ranges.popleft()[2]))
                position += size
        return pieces

    try:
        unchecked = True  # until the hashes are in
        async with contextlib.aclosing(source.pieces(offset, length)) as stream:
            async for chunk in stream:
                arrived.add(chunk)
                if unchecked and hashes.done():
                    unchecked, found = False, hashes.result()
                    ranges = None if found is None else deque(found)
                if not unchecked and (pieces := ready(end=False)):
                    if not await _in_thread(writes, _check_and_put, file, pieces):
                        return None
        if unchecked:
            found = await hashes
            ranges = None if found is None else deque(found)
        if pieces := ready(end=True):
            if not await _in_thread(writes, _check_and_put, file, pieces):
                return None
        if ranges or arrived.size or position != offset + length:
            return None  # ranges that do not line up with the bytes: not checkable
        return ranges is not None
    finally:
        if not hashes.done():
            hashes.cancel()
        await asyncio.gather(hashes, return_exceptions=True)


async def fetch_part(source: PartSource, file: PartFile, index: int, stats: PartStats,
                     writes: set[asyncio.Future],
                     asked: Callable[[int], None] = lambda change: None) -> int:
    """Part `index` of `file`, written as it arrives and checked against Telegram's
    hashes where it has them (fetched again when they do not match), then made durable
    and recorded; returns its length. `asked(1)` as it is asked for, `asked(-1)` once it
    has arrived."""
    offset, length = file.span(index)
    for attempt in range(1, MAX_MISMATCHES + 1):
        asked(1)
        try:
            verified = await _stream_part(source, file, offset, length, writes)
        finally:
            asked(-1)
        if verified is not None:
            await _in_thread(writes, file.record, index, verified)
            return length
        _mismatched(stats, offset, attempt)
    raise _corrupted(offset)


def _mismatched(stats: PartStats, offset: int, attempt: int) -> None:
    """A part's bytes failed Telegram's hashes: counted, and fetched again."""
    stats.refetched += 1
    PARTS_REFETCHED.inc()
    log.warning("part at %d does not match Telegram's hashes (fetch %d of %d)",
                offset, attempt, MAX_MISMATCHES)


def _corrupted(offset: int) -> PermanentError:
    return PermanentError.of(
        ErrorCode.retries_exhausted,
        f"the bytes at {offset} failed Telegram's SHA-256 check {MAX_MISMATCHES} times "
        "in a row: Telegram keeps sending a corrupted range")


async def fetch_parts(
    source: PartSource,
    file: PartFile,
    width: int,
    on_part: Callable[[int], Awaitable[None]],
    stats: PartStats | None = None,
    asking: Callable[[int], None] | None = None,
) -> None:
    """Fetch every part `file` is missing, `width` at a time, each written as it
    arrives (checked against Telegram's hashes where it has them) and recorded once
    whole and durable; `on_part(nbytes)` after each; `asking(n)` whenever the number of
    parts asked for and not yet arrived changes (a part being made durable holds no
    connection). The first failure stops the other parts and is raised; parts already
    recorded stay recorded."""
    todo = deque(file.missing())
    writes: set[asyncio.Future] = set()
    stats = stats if stats is not None else PartStats()
    asked = 0

    def ask(change: int) -> None:
        nonlocal asked
        asked += change
        if asking is not None:
            asking(asked)

    async def worker() -> None:
        while todo:
            await on_part(await fetch_part(source, file, todo.popleft(), stats, writes, ask))

    workers = [asyncio.create_task(worker()) for _ in range(min(width, len(todo)))]
    try:
        while workers:
            done, pending = await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            workers = list(pending)
    finally:
        for task in workers:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*workers, return_exceptions=True)
        await asyncio.gather(*writes, return_exceptions=True)
