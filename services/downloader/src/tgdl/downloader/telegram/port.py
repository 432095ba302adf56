"""The port the downloader depends on: a source of Telegram media. Two real adapters
implement it: `simulated.SimulatedTelegram` (demo, tests, benchmarks) and
`telethon.TelethonTelegram` (a real account)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

from tgdl.contracts.catalog import CatalogEntry, MediaKind
from tgdl.telegram.errors import (  # the port's vocabulary, shared with every adapter
    FloodWait,
    PermanentError,
    TelegramError,
    TransientError,
)

__all__ = ["FloodWait", "PermanentError", "RemoteMedia", "TelegramError", "TelegramPort",
           "TransientError"]


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


class TelegramPort(Protocol):
    #: bytes per request; resume offsets are rounded down to a multiple of it
    request_size: int

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def resolve(self, entry: CatalogEntry) -> RemoteMedia:
        """Fetch the message and describe its media; raises PermanentError if it cannot be
        downloaded at all."""
        ...

    def stream(self, media: RemoteMedia, offset: int) -> AsyncIterator[bytes]:
        """Yield the media's bytes from `offset` (a multiple of `request_size`) to the end,
        in chunks of at most `request_size`. Refreshes expired file references itself;
        raises FloodWait, TransientError or PermanentError."""
        ...

    def serving(self) -> int:
        """How many downloads this adapter is serving right now (for logs and metrics)."""
        ...
