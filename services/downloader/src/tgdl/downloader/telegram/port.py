"""The port the downloader depends on: a source of Telegram media. Two real adapters
implement it: `simulated.SimulatedTelegram` (demo, tests, benchmarks) and
`telethon.TelethonTelegram` (a real account)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

from tgdl.contracts.catalog import CatalogEntry, MediaKind
from tgdl.telegram.errors import (  # the port's vocabulary, shared with every adapter
    FloodWait,
    PermanentError,
    TelegramError,
    TransientError,
)

__all__ = ["PART_SIZE", "FloodWait", "PartSource", "PermanentError", "RemoteMedia",
           "TelegramError", "TelegramPort", "TransientError"]

#: Telegram's largest `upload.getFile` request. Parts start at multiples of it, so every
#: request is 4 KiB-aligned, divides 1 MiB and never crosses a 1 MiB boundary.
PART_SIZE = 1024 * 1024


class RemoteMedia(BaseModel):
    """A message's media as Telegram describes it right now."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    entry: CatalogEntry
    kind: MediaKind
    size: int
    mime_type: str | None = None
    file_name: str | None = None
    dc_id: int | None = None
    handle: Any = None  # adapter-specific (e.g. Telethon's document or photo object)


class PartSource(Protocol):
    """One file being fetched in parts. Trouble that concerns the whole file is handled
    once for all parts in flight: an expired file reference is refreshed once, a file
    that lives in another data center moves there for every part."""

    async def read(self, offset: int, length: int) -> bytes:
        """Bytes `[offset, offset + length)`: `offset` a multiple of PART_SIZE, `length`
        at most PART_SIZE (less only for the last part). Waits for a free connection of
        the account's pool; raises FloodWait, TransientError or PermanentError."""
        ...

    def pieces(self, offset: int, length: int) -> AsyncIterator[bytes]:
        """The same bytes as `read`, in order, as they arrive (chunks of any size): a
        part goes to disk while it comes in instead of being held whole. Close the
        iterator (`contextlib.aclosing`) to give its connection back early."""
        ...

    async def hashes(self, offset: int, length: int) -> list[tuple[int, int, bytes]] | None:
        """Telegram's SHA-256 of the ranges covering `[offset, offset + length)`, as
        (offset, length, digest), or None when it publishes none for this file."""
        ...


Range = tuple[int, int, bytes]  # (offset, length, sha256) as Telegram publishes them


class SharedFile:
    """What every part of one file shares, for any adapter: the 1 MiB rules, one
    reference refresh for all the parts that saw it expire, and Telegram's range hashes,
    asked for once and reused by every part. Adapters subclass it for their `PartSource`."""

    def __init__(self, max_refreshes: int) -> None:
        self._max_refreshes = max_refreshes
        self._generation = 0  # bumped by each reference refresh
        self._refreshes = 0
        self._refreshing = asyncio.Lock()
        self._hashes: dict[int, tuple[int, bytes]] = {}  # range offset -> (length, sha256)
        self._no_hashes = False

    async def read(self, offset: int, length: int) -> bytes:
        raise NotImplementedError

    async def pieces(self, offset: int, length: int) -> AsyncIterator[bytes]:
        """`PartSource.pieces` for an adapter whose parts arrive whole (one MTProto
        answer): the part in one piece."""
        yield await self.read(offset, length)

    @staticmethod
    def check_part(offset: int, length: int) -> None:
        if offset % PART_SIZE or not 0 < length <= PART_SIZE:
            raise ValueError(f"part {offset}+{length} breaks the 1 MiB rules")

    async def refresh_once(self, seen: int, refresh: Callable[[], Awaitable[None]],
                           why: str) -> None:
        """Refresh the file reference that part saw expire (at generation `seen`), unless
        another part did meanwhile; give up after `max_refreshes` refreshes."""
        async with self._refreshing:
            if self._generation != seen:
                return
            self._refreshes += 1
            if self._refreshes > self._max_refreshes:
                raise TransientError(f"file reference rejected {self._refreshes} times ({why})")
            await refresh()
            self._generation += 1

    async def covering_hashes(self, offset: int, length: int,
                              ranges_from: Callable[[int], Awaitable[list[Range]]],
                              ) -> list[Range] | None:
        """The known ranges over `[offset, offset + length)`, asking `ranges_from(position)`
        (a few ranges from there) for what is missing; None when the file has none, or
        ranges that do not line up with the parts."""
        end, position = offset + length, offset
        while position < end and not self._no_hashes:
            known = self._hashes.get(position)
            if known is None:
                for start, size, digest in await ranges_from(position):
                    if size > 0:
                        self._hashes[start] = (size, digest)
                known = self._hashes.get(position)
                if known is None:
                    self._no_hashes = True
                    break
            position += known[0]
        if self._no_hashes:
            return None
        found, position = [], offset
        while position < end:
            # Handed over once: a part's ranges are not needed again unless it is
            # fetched again, which asks anew; kept, they grew with the file (16 384 for
            # 2 GiB).
            size, digest = self._hashes.pop(position)
            found.append((position, size, digest))
            position += size
        return found


class TelegramPort(Protocol):
    #: bytes per request; resume offsets are rounded down to a multiple of it
    request_size: int

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def resolve(self, entry: CatalogEntry) -> RemoteMedia:
        """Describe the message's media: from the location the catalog kept, without a
        request, else by fetching the message (PermanentError if it cannot be downloaded
        at all). An expired kept reference is refreshed by `parts`/`stream` themselves."""
        ...

    def stream(self, media: RemoteMedia, offset: int) -> AsyncIterator[bytes]:
        """Yield the media's bytes from `offset` (a multiple of `request_size`) to the end,
        in chunks of at most `request_size`, over one connection. Refreshes expired file
        references itself; raises FloodWait, TransientError or PermanentError. (The
        worker fetches with `parts`; this is for reading a file front to back.)"""
        ...

    def parts(self, media: RemoteMedia) -> AbstractAsyncContextManager[PartSource]:
        """Fetch `media` in parts, any number of them at once; a pool of connections per
        data center of the account bounds how many requests are really in flight."""
        ...

    def serving(self) -> int:
        """How many downloads this adapter is serving right now (for logs and metrics)."""
        ...
