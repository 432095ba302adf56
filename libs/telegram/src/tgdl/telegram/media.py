"""A message's downloadable file as Telegram describes it, and where to fetch it from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from telethon.tl import types

from tgdl.contracts.catalog import FileLocation, MediaKind
from tgdl.contracts.errors import ErrorCode
from tgdl.telegram.errors import PermanentError


@dataclass(frozen=True)
class MediaInfo:
    """What a message's downloadable media is, as Telegram describes it."""

    kind: MediaKind
    size: int
    mime_type: str | None
    file_name: str | None
    dc_id: int
    media_id: int  # the document's or photo's id: tells whether a refetch is the same file
    handle: types.Document | types.Photo


def _photo_size_bytes(size: Any) -> int | None:
    if isinstance(size, types.PhotoSize):
        return size.size
    if isinstance(size, types.PhotoSizeProgressive):
        return max(size.sizes) if size.sizes else None
    return None  # stripped/cached/path sizes are inline thumbnails, not downloadable files


def largest_photo_size(photo: types.Photo) -> tuple[str, int] | None:
    """(size type, bytes) of the biggest downloadable size; Telegram's order is no promise."""
    sized = [(s.type, n) for s in photo.sizes if (n := _photo_size_bytes(s))]
    return max(sized, key=lambda pair: pair[1]) if sized else None


def _document_kind(document: types.Document) -> MediaKind:
    for attribute in document.attributes:
        if isinstance(attribute, types.DocumentAttributeAudio):
            return MediaKind.voice if attribute.voice else MediaKind.audio
    for attribute in document.attributes:
        if isinstance(attribute, types.DocumentAttributeVideo):
            return MediaKind.video
    mime = document.mime_type or ""
    if mime.startswith("video/"):
        return MediaKind.video
    if mime.startswith("audio/"):
        return MediaKind.audio
    return MediaKind.document


def describe_media(media: Any) -> MediaInfo | None:
    """The message media's downloadable file, or None (text, web preview, poll, expired
    self-destructing media, ...)."""
    if isinstance(media, types.MessageMediaPhoto) and isinstance(media.photo, types.Photo):
        photo = media.photo
        largest = largest_photo_size(photo)
        if largest is None:
            return None
        return MediaInfo(MediaKind.photo, largest[1], "image/jpeg", None, photo.dc_id, photo.id,
                         photo)
    if isinstance(media, types.MessageMediaDocument) and isinstance(
        media.document, types.Document
    ):
        document = media.document
        file_name = next(
            (a.file_name for a in document.attributes
             if isinstance(a, types.DocumentAttributeFilename)),
            None,
        )
        return MediaInfo(_document_kind(document), document.size, document.mime_type or None,
                         file_name, document.dc_id, document.id, document)
    return None


def location_of(info: MediaInfo) -> FileLocation:
    """What fetching the file needs, to keep in the catalog (the reference as hex)."""
    handle = info.handle
    thumb = ""
    if isinstance(handle, types.Photo):
        largest = largest_photo_size(handle)
        if largest is None:
            raise PermanentError.of(ErrorCode.no_media, "the photo has no downloadable size")
        thumb = largest[0]
    return FileLocation(
        kind="photo" if isinstance(handle, types.Photo) else "document",
        id=handle.id, access_hash=handle.access_hash,
        file_reference=bytes(handle.file_reference).hex(), dc_id=info.dc_id,
        size=info.size, thumb_size=thumb,
    )


def input_location(location: FileLocation) -> Any:
    """The input location of the whole file (not a thumbnail) that `upload.getFile` takes."""
    reference = bytes.fromhex(location.file_reference)
    if location.kind == "photo":
        return types.InputPhotoFileLocation(
            id=location.id, access_hash=location.access_hash, file_reference=reference,
            thumb_size=location.thumb_size,
        )
    return types.InputDocumentFileLocation(
        id=location.id, access_hash=location.access_hash, file_reference=reference,
        thumb_size="",
    )
