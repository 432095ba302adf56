"""A message the service knows about: where it lives in Telegram and what media it carries."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict


class MediaKind(StrEnum):
    photo = "photo"
    video = "video"
    document = "document"
    audio = "audio"
    voice = "voice"


class FileLocation(BaseModel):
    """Where Telegram keeps a message's file, as the sync saw it: enough to fetch the bytes
    without asking for the message first. The file reference expires after a while; the
    downloader then asks for the message once and goes on at the same offset."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["document", "photo"]  # Telegram's two kinds of input file location
    id: int  # the document's or photo's id, the same in every message that forwards it
    access_hash: int = 0
    file_reference: str = ""  # hex of Telegram's opaque bytes
    dc_id: int | None = None  # the data center that stores the file
    size: int
    thumb_size: str = ""  # photos: the size type of the largest downloadable size

    @property
    def file_key(self) -> str:
        """The file itself, whichever message carries it: a document or photo forwarded
        into other messages or chats keeps its id, so its forwards share this key."""
        return f"{self.kind}-{self.id}"


class CatalogEntry(BaseModel):
    """One row of the message catalog (filled by the simulated Telegram or by `tgdl sync`)."""

    model_config = ConfigDict(frozen=True)

    message_id: int  # the id users pass to the API
    chat: str  # chat username or numeric id, as Telethon accepts it
    telegram_message_id: int  # the message's id inside that chat
    media_kind: MediaKind | None = None  # None: the message carries no downloadable media
    file_name: str | None = None
    mime_type: str | None = None
    size: int | None = None
    date: datetime | None = None
    caption: str | None = None
    # Where to fetch the file; None for rows synced before locations were kept (the
    # downloader then asks Telegram for the message).
    location: FileLocation | None = None
    # An album's messages share it (Telegram's grouped_id); None: not in an album.
    grouped_id: int | None = None
