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
from tgdl.downloader.telegram.port import PartSource, PermanentError

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
        stats.refetched += 1
        PARTS_REFETCHED.inc()
        log.warning("part at %d does not match Telegram's hashes (fetch %d of %d)",
                    offset, attempt, MAX_MISMATCHES)
    raise PermanentError.of(
        ErrorCode.retries_exhausted,
        f"the bytes at {offset} failed Telegram's SHA-256 check {MAX_MISMATCHES} times "
        "in a row: Telegram keeps sending a corrupted range")


async def fetch_parts(
    source: PartSource,
    file: PartFile,
    width: int,
    on_part: Callable[[int], Awaitable[None]],
    stats: PartStats | None = None,
) -> None:
    """Fetch every part `file` is missing, `width` at a time, each checked against
    Telegram's hashes where it has them and stored (durably) as soon as it passes;
    `on_part(nbytes)` after each. The first failure stops the other parts and is raised;
    parts already stored stay stored."""
    todo = deque(file.missing())
    writes: set[asyncio.Future] = set()
    stats = stats if stats is not None else PartStats()

    async def worker() -> None:
        while todo:
            index = todo.popleft()
            data, verified = await fetch_checked(source, *file.span(index), stats)
            length = len(data)
            # Shielded: a write once begun completes before the file may be closed.
            write = asyncio.ensure_future(asyncio.to_thread(file.write, index, data, verified))
            writes.add(write)
            await asyncio.shield(write)
            del data
            await on_part(length)

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
