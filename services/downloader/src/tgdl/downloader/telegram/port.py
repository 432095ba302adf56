"""The port the downloader depends on: a source of Telegram media. Two real adapters
implement it: `simulated.SimulatedTelegram` (demo, tests, benchmarks) and
`telethon.TelethonTelegram` (a real account)."""

from __future__ import annotations

from collections.abc import AsyncIterator
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

    async def hashes(self, offset: int, length: int) -> list[tuple[int, int, bytes]] | None:
        """Telegram's SHA-256 of the ranges covering `[offset, offset + length)`, as
        (offset, length, digest), or None when it publishes none for this file."""
        ...


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
