"""A message the service knows about: where it lives in Telegram and what media it carries."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict


class MediaKind(StrEnum):
    photo = "photo"
    video = "video"
    document = "document"
    audio = "audio"
    voice = "voice"


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
