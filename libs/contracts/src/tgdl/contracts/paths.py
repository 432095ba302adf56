"""Where a message's media is stored, and how Telegram-provided names are made safe.

Layout: ``<media_root>/<kind>s/<message_id>_<telegram_message_id>_<name>``. The name
comes from Telegram, so it is untrusted: no separators, no ``..``, no control characters,
bounded length, and an extension derived from the mime type when it has none.
"""

from __future__ import annotations

import mimetypes
import re
import unicodedata
from pathlib import PurePosixPath

from tgdl.contracts.catalog import CatalogEntry, MediaKind

MAX_NAME_BYTES = 150  # leaves room for the id prefix and ".part" under common 255-byte limits
PART_SUFFIX = ".part"

_DEFAULT_EXT = {
    MediaKind.photo: ".jpg",
    MediaKind.video: ".mp4",
    MediaKind.audio: ".mp3",
    MediaKind.voice: ".ogg",
    MediaKind.document: ".bin",
}
_UNSAFE = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|#%]')  # also # and %: they break URLs


def extension_for(mime_type: str | None, kind: MediaKind) -> str:
    if mime_type:
        ext = {"image/jpeg": ".jpg", "audio/ogg": ".ogg", "audio/mpeg": ".mp3"}.get(
            mime_type
        ) or mimetypes.guess_extension(mime_type, strict=False)
        if ext:
            return ext
    return _DEFAULT_EXT[kind]


def safe_name(name: str | None, mime_type: str | None, kind: MediaKind) -> str:
    """A file name that cannot escape its folder or confuse a terminal."""
    text = unicodedata.normalize("NFC", name or "")
    text = _UNSAFE.sub("_", text)
    text = "".join(ch for ch in text if unicodedata.category(ch)[0] != "C")
    text = text.strip().strip(".").strip()
    text = re.sub(r"\s+", " ", text).replace(" ", "_")
    stem, dot, ext = text.rpartition(".")
    if not dot or not stem or not re.fullmatch(r"[A-Za-z0-9]{1,10}", ext):
        stem, ext = text, ""
    suffix = f".{ext}" if ext else extension_for(mime_type, kind)
    stem = stem or kind.value
    budget = MAX_NAME_BYTES - len(suffix.encode())
    while len(stem.encode()) > budget:
        stem = stem[:-1]
    return f"{stem}{suffix}"


def relative_path(entry: CatalogEntry) -> PurePosixPath:
    """Path of the finished file relative to the media root (also its URL path)."""
    if entry.media_kind is None:
        raise ValueError(f"message {entry.message_id} has no media")
    name = safe_name(entry.file_name, entry.mime_type, entry.media_kind)
    return PurePosixPath(
        f"{entry.media_kind.value}s", f"{entry.message_id}_{entry.telegram_message_id}_{name}"
    )


def download_url(relative: PurePosixPath | str) -> str:
    return f"/media/{relative}"
