"""A file fetched as 1 MiB parts, several at once, each written at its offset.

How many parts of one file are in flight is `parts_for` (by size, like tdl: one part under
1 MiB, up to 8 for large files); how many requests really run at once is further bounded
by the adapter's pool of connections per data center, shared by every file of the account.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable

from tgdl.downloader.files import PartFile
from tgdl.downloader.telegram.port import PartSource

MiB = 1024 * 1024
# (files smaller than this, parts in flight); larger files get MAX_PARTS
_BY_SIZE = ((1 * MiB, 1), (5 * MiB, 2), (20 * MiB, 4))
MAX_PARTS = 8


def parts_for(size: int, setting: int = 0) -> int:
    """Parts of one file in flight: `setting` if set, else by size."""
    if setting > 0:
        return setting
    return next((n for limit, n in _BY_SIZE if size < limit), MAX_PARTS)


async def fetch_parts(
    source: PartSource,
    file: PartFile,
    width: int,
    on_part: Callable[[int], Awaitable[None]],
) -> None:
    """Fetch every part `file` is missing, `width` at a time, each stored (durably) as
    soon as it arrives; `on_part(nbytes)` after each. The first failure stops the other
    parts and is raised; parts already stored stay stored."""
    todo = deque(file.missing())
    writes: set[asyncio.Future] = set()

    async def worker() -> None:
        while todo:
            index = todo.popleft()
            offset, length = file.span(index)
            data = await source.read(offset, length)
            # Shielded: a write once begun completes before the file may be closed.
            write = asyncio.ensure_future(asyncio.to_thread(file.write, index, data))
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
