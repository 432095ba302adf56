"""The Telegram port for a real account, on Telethon.

Every request goes through Telethon's own machinery (`get_messages`, `iter_download`,
exported senders for files stored in other data centers); this module only adds what
Telethon leaves to its caller:

- the client is built so that every error reaches us: `flood_sleep_threshold=0` (Telethon
  would otherwise sleep through flood waits inside the request) and
  `raise_last_call_error=True` (otherwise repeated server errors end as a bare ValueError,
  indistinguishable from "unknown chat");
- expired file references are refreshed by fetching the message again and the download
  continues at the same offset (Telethon's `iter_download` does not do it);
- every failure becomes FloodWait, TransientError or PermanentError with a reason.

Telegram's rules for `upload.getFile`: offset and limit multiples of 4 KiB, the limit
divides 1 MiB, and no request crosses a 1 MiB boundary. Requests of `request_size` bytes
(512 KiB) at offsets that are multiples of it satisfy all three.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from telethon import TelegramClient, errors
from telethon.sessions import StringSession
from telethon.tl import types

from tgdl.contracts.catalog import CatalogEntry, MediaKind
from tgdl.contracts.errors import ErrorCode
from tgdl.downloader.telegram.port import (
    FloodWait,
    PermanentError,
    RemoteMedia,
    TelegramError,
    TransientError,
)

REQUEST_SIZE = 512 * 1024  # Telethon's maximum; divides 1 MiB
MAX_REFERENCE_REFRESHES = 3  # per stream; more means Telegram keeps rejecting fresh ones


class TelegramSettings(BaseSettings):
    """The Telegram account (shared by the downloader and the `tgdl` command)."""

    model_config = SettingsConfigDict(env_prefix="TGDL_", extra="ignore")

    api_id: int | None = None
    api_hash: str | None = None
    session_file: Path = Path(".tgdl/telegram.session")  # a StringSession, owner-only
    account: str = "default"  # replicas logged in to one account share its flood waits
    telegram_timeout: float = Field(default=60.0, gt=0)  # seconds for one request


class TelegramSetupError(RuntimeError):
    """The account cannot be used at all: missing credentials or session, not logged in."""


# --- building a client -----------------------------------------------------------------------


def client_options() -> dict[str, Any]:
    """Options every client of the project is built with (see the module docstring)."""
    return {
        "flood_sleep_threshold": 0,
        "raise_last_call_error": True,
        "request_retries": 2,  # server hiccups; beyond that the worker's back-off decides
        "receive_updates": False,  # nothing here reacts to updates
    }


def api_credentials(settings: TelegramSettings) -> tuple[int, str]:
    missing = [
        name
        for name, value in (("TGDL_API_ID", settings.api_id), ("TGDL_API_HASH", settings.api_hash))
        if not value
    ]
    if missing:
        raise TelegramSetupError(
            f"Telegram API credentials are missing: set {' and '.join(missing)} "
            "(create them at https://my.telegram.org under 'API development tools')."
        )
    return int(settings.api_id), str(settings.api_hash)  # type: ignore[arg-type]


def read_session(path: Path) -> str:
    path = path.expanduser()
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        raise TelegramSetupError(
            f"No Telegram session at {path}: run `tgdl login` first "
            "(or point TGDL_SESSION_FILE at an existing session)."
        ) from None
    if not text:
        raise TelegramSetupError(f"The Telegram session {path} is empty: run `tgdl login`.")
    return text


def write_session(path: Path, session: str) -> None:
    """Store the session string readable by its owner only: it grants the whole account."""
    path = path.expanduser()
    folder = path.parent
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if folder.resolve() not in (Path.cwd().resolve(), Path.home().resolve()):
        os.chmod(folder, 0o700)  # never loosen (or tighten) a folder the user lives in
    temporary = folder / f".{path.name}.{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # a leftover temporary may have had other bits
        os.write(fd, session.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)


def build_client(
    settings: TelegramSettings,
    client_class: Callable[..., TelegramClient] = TelegramClient,
) -> TelegramClient:
    api_id, api_hash = api_credentials(settings)
    session = StringSession(read_session(settings.session_file))
    return client_class(session, api_id, api_hash, **client_options())


# --- chats -----------------------------------------------------------------------------------


def chat_ref(chat: str) -> str | int:
    """A catalog chat as Telethon wants it: marked numeric ids as int, names as text."""
    text = chat.strip()
    return int(text) if re.fullmatch(r"-?\d+", text) else text


class PeerResolver:
    """Chat -> input peer. Usernames resolve over the network; a numeric id needs its
    access hash, which a fresh StringSession does not have until the account's dialogs
    were listed once (done lazily, once per client)."""

    def __init__(self, client: TelegramClient) -> None:
        self._client = client
        self._dialogs_loaded = False
        self._lock = asyncio.Lock()

    async def input_peer(self, chat: str) -> Any:
        ref = chat_ref(chat)
        try:
            return await self._client.get_input_entity(ref)
        except ValueError:
            if not isinstance(ref, int) or self._dialogs_loaded:
                raise
        async with self._lock:
            if not self._dialogs_loaded:
                await self._client.get_dialogs(limit=None)
                self._dialogs_loaded = True
        return await self._client.get_input_entity(ref)


# --- media -----------------------------------------------------------------------------------


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


def file_location(handle: types.Document | types.Photo) -> Any:
    """The input location of the whole file (not a thumbnail), with the handle's current
    file reference."""
    if isinstance(handle, types.Document):
        return types.InputDocumentFileLocation(
            id=handle.id, access_hash=handle.access_hash,
            file_reference=handle.file_reference, thumb_size="",
        )
    largest = largest_photo_size(handle)
    if largest is None:
        raise PermanentError.of(ErrorCode.no_media, "the photo has no downloadable size")
    return types.InputPhotoFileLocation(
        id=handle.id, access_hash=handle.access_hash,
        file_reference=handle.file_reference, thumb_size=largest[0],
    )


# --- errors ----------------------------------------------------------------------------------

_ACCESS_DENIED: tuple[type[Exception], ...] = (
    errors.ChannelPrivateError,
    errors.ChatForbiddenError,
    errors.ChatAdminRequiredError,
    errors.UserBannedInChannelError,
    errors.ChannelBannedError,
    errors.ChatRestrictedError,
    errors.ChannelPublicGroupNaError,
    errors.ForbiddenError,  # any other 403
)
_NOT_FOUND: tuple[type[Exception], ...] = (
    errors.UsernameInvalidError,
    errors.UsernameNotOccupiedError,
    errors.ChannelInvalidError,
    errors.PeerIdInvalidError,
    errors.MsgIdInvalidError,
    errors.MessageIdInvalidError,
)
_FILE_GONE: tuple[type[Exception], ...] = (
    errors.FileIdInvalidError,
    errors.LocationInvalidError,
    errors.MediaEmptyError,
    errors.FileReferenceEmptyError,
)
_REFERENCE_EXPIRED: tuple[type[Exception], ...] = (
    errors.FileReferenceExpiredError,
    errors.FileReferenceInvalidError,
    errors.FilerefUpgradeNeededError,
)
_TRANSIENT: tuple[type[Exception], ...] = (
    errors.ServerError,  # 5xx, RPC_CALL_FAIL and friends
    errors.TimedOutError,
    errors.InvalidDCError,  # a migrate Telethon did not follow: try again
    OSError,  # ConnectionError, TimeoutError (asyncio's too), socket errors
)


# Telegram's name for each error class ("CHANNEL_PRIVATE"), for details people can search.
_RPC_NAMES: dict[type, str] = {
    **{cls: name for name, cls in errors.rpcerrorlist.rpc_errors_dict.items()},
    **{cls: pattern.replace("_(\\d+)", "") for pattern, cls in errors.rpcerrorlist.rpc_errors_re},
}


def _rpc_name(exc: BaseException) -> str:
    if type(exc) in _RPC_NAMES:
        return _RPC_NAMES[type(exc)]
    return getattr(exc, "message", None) or type(exc).__name__


def classify(exc: BaseException, *, resolving: bool) -> TelegramError:
    """Turn whatever Telethon raised into the port's vocabulary. `resolving`: the error
    came while finding the chat or message (a ValueError then means "no such chat")."""
    if isinstance(exc, TelegramError):
        return exc
    if isinstance(exc, errors.FloodError):
        seconds = getattr(exc, "seconds", None)
        if seconds is None:
            return TransientError(f"Telegram flood limit without a wait time ({_rpc_name(exc)})")
        return FloodWait(max(int(seconds), 1), f"Telegram asked to wait {seconds} s "
                                                f"({_rpc_name(exc)})")
    if isinstance(exc, _ACCESS_DENIED):
        return PermanentError.of(ErrorCode.access_denied,
                                 f"Telegram refused access to the chat ({_rpc_name(exc)})")
    if isinstance(exc, _NOT_FOUND) or (resolving and isinstance(exc, ValueError)):
        return PermanentError.of(ErrorCode.message_not_found,
                                 f"Telegram does not know this chat or message ({exc})")
    if isinstance(exc, errors.UnauthorizedError | errors.AuthKeyDuplicatedError):
        # AUTH_KEY_DUPLICATED: one session was used by two processes at once; Telegram
        # then revokes it. Every replica needs a session of its own.
        return PermanentError.of(
            ErrorCode.access_denied,
            f"the Telegram session is no longer authorized ({_rpc_name(exc)}); "
            "run `tgdl login` again")
    if isinstance(exc, _FILE_GONE):
        return PermanentError.of(ErrorCode.message_deleted,
                                 f"Telegram no longer serves this file ({_rpc_name(exc)})")
    if isinstance(exc, _TRANSIENT):
        return TransientError(f"{type(exc).__name__}: {exc}".strip(": "))
    if isinstance(exc, errors.BadRequestError):
        return PermanentError.of(ErrorCode.internal,
                                 f"Telegram rejected the request ({_rpc_name(exc)})")
    if isinstance(exc, errors.RPCError):
        return TransientError(f"Telegram error {exc.code} {_rpc_name(exc)}")
    return TransientError(f"unexpected {type(exc).__name__}: {exc}")


# --- the adapter -----------------------------------------------------------------------------


class TelethonTelegram:
    """TelegramPort on a logged-in Telethon client (the adapter owns and closes it)."""

    request_size = REQUEST_SIZE

    def __init__(
        self,
        client: TelegramClient,
        *,
        request_timeout: float = 60.0,
        max_reference_refreshes: int = MAX_REFERENCE_REFRESHES,
    ) -> None:
        self._client = client
        self._peers = PeerResolver(client)
        self._timeout = request_timeout
        self._max_refreshes = max_reference_refreshes
        self._serving = 0

    @classmethod
    def from_settings(cls, settings: TelegramSettings | None = None) -> TelethonTelegram:
        settings = settings or TelegramSettings()
        return cls(build_client(settings), request_timeout=settings.telegram_timeout)

    @property
    def client(self) -> TelegramClient:
        return self._client

    async def start(self) -> None:
        if not self._client.is_connected():
            await self._client.connect()
        if not await self._client.is_user_authorized():
            raise TelegramSetupError(
                "The Telegram session is not logged in (or was logged out): run `tgdl login`."
            )

    async def close(self) -> None:
        await self._client.disconnect()

    def serving(self) -> int:
        return self._serving

    # --- messages ----------------------------------------------------------------------------

    async def _message(self, entry: CatalogEntry) -> Any:
        try:
            async with asyncio.timeout(self._timeout):
                peer = await self._peers.input_peer(entry.chat)
                message = await self._client.get_messages(peer, ids=entry.telegram_message_id)
        except Exception as exc:
            raise classify(exc, resolving=True) from exc
        if message is None or isinstance(message, types.MessageEmpty):
            raise PermanentError.of(
                ErrorCode.message_deleted,
                f"message {entry.telegram_message_id} of {entry.chat} no longer exists",
            )
        return message

    async def _media(self, entry: CatalogEntry) -> MediaInfo:
        info = describe_media(getattr(await self._message(entry), "media", None))
        if info is None:
            raise PermanentError.of(
                ErrorCode.no_media,
                f"message {entry.telegram_message_id} of {entry.chat} has no downloadable media",
            )
        return info

    async def resolve(self, entry: CatalogEntry) -> RemoteMedia:
        info = await self._media(entry)
        return RemoteMedia(
            entry=entry, kind=info.kind, size=info.size, mime_type=info.mime_type,
            file_name=info.file_name, dc_id=info.dc_id, handle=info.handle,
        )

    async def _refreshed(self, media: RemoteMedia) -> types.Document | types.Photo:
        """The same file with a fresh file reference (references expire after a while)."""
        info = await self._media(media.entry)
        if info.media_id != media.handle.id or info.size != media.size:
            # The message was edited to carry another file: the bytes on disk belong to
            # the old one, so only a fresh download can give a consistent file.
            raise PermanentError.of(
                ErrorCode.size_mismatch,
                "the message's media was replaced while it was downloading",
            )
        return info.handle

    # --- bytes -------------------------------------------------------------------------------

    async def stream(self, media: RemoteMedia, offset: int) -> AsyncIterator[bytes]:
        if offset < 0 or offset % self.request_size:
            raise ValueError(f"offset {offset} is not a multiple of {self.request_size}")
        handle = media.handle
        refreshes = 0
        self._serving += 1
        try:
            while offset < media.size:
                chunks = self._client.iter_download(
                    file_location(handle),
                    offset=offset,
                    request_size=self.request_size,
                    chunk_size=self.request_size,
                    file_size=media.size,
                    dc_id=media.dc_id,
                    # Counted from `offset`: no request past the end of the file.
                    limit=math.ceil((media.size - offset) / self.request_size),
                )
                try:
                    while True:
                        async with asyncio.timeout(self._timeout):
                            chunk = await anext(chunks, None)
                        if chunk is None:
                            break
                        data = bytes(chunk)
                        offset += len(data)
                        yield data
                except _REFERENCE_EXPIRED as exc:
                    refreshes += 1
                    if refreshes > self._max_refreshes:
                        raise TransientError(
                            f"file reference rejected {refreshes} times ({_rpc_name(exc)})"
                        ) from exc
                    handle = await self._refreshed(media)
                    continue  # same offset: nothing yielded is requested again
                except Exception as exc:
                    raise classify(exc, resolving=False) from exc
                finally:
                    await _release(chunks)
                if offset < media.size:
                    raise TransientError(
                        f"Telegram ended the file at {offset} of {media.size} bytes"
                    )
        finally:
            self._serving -= 1


async def _release(chunks: Any) -> None:
    """Return the exported sender a download borrowed (Telethon's download iterator only
    does it itself when a short read ends the file, not on errors or early exits)."""
    if getattr(chunks, "_sender", None) is not None:  # set once the first request is prepared
        await chunks.close()
