"""The Telegram port for a real account, on Telethon.

Every request goes through Telethon's own machinery (`get_messages`, `iter_download`,
exported senders for files stored in other data centers); this module only adds what
Telethon leaves to its caller:

- the client is built so that every error reaches us (`tgdl.telegram.client`);
- the file's location comes from the catalog (kept by `tgdl sync`), so a file costs no
  request for its message while its file reference is fresh;
- expired file references are refreshed by fetching the message again and the download
  continues at the same offset (Telethon's `iter_download` does not do it);
- every failure becomes FloodWait, TransientError or PermanentError with a reason
  (`tgdl.telegram.rpc`).

Telegram's rules for `upload.getFile`: offset and limit multiples of 4 KiB, the limit
divides 1 MiB, and no request crosses a 1 MiB boundary. Requests of `request_size` bytes
(512 KiB) at offsets that are multiples of it satisfy all three, and so do the parts of
`parts()`: 1 MiB at multiples of 1 MiB, over a pool of connections per data center
(`tgdl.telegram.senders`), with one reference refresh and one DC move for all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from typing import Any

from telethon import TelegramClient, errors
from telethon.tl import functions, types

from tgdl.contracts.catalog import CatalogEntry, FileLocation
from tgdl.contracts.errors import ErrorCode
from tgdl.downloader.telegram.port import PART_SIZE, Range, RemoteMedia, SharedFile
from tgdl.telegram.client import TelegramSettings, TelegramSetupError, build_client
from tgdl.telegram.errors import PermanentError, TransientError
from tgdl.telegram.media import MediaInfo, describe_media, input_location, location_of
from tgdl.telegram.peers import PeerResolver
from tgdl.telegram.rpc import REFERENCE_EXPIRED, as_telegram_error, rpc_name
from tgdl.telegram.senders import SenderPool

REQUEST_SIZE = 512 * 1024  # Telethon's maximum; divides 1 MiB
MAX_REFERENCE_REFRESHES = 3  # per stream; more means Telegram keeps rejecting fresh ones


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
        connections_per_dc: int = 4,
        requests_per_connection: int = 2,
    ) -> None:
        self._client = client
        self._pool = SenderPool(client, connections_per_dc, requests_per_connection)
        self._peers = PeerResolver(client)
        self._timeout = request_timeout
        self._max_refreshes = max_reference_refreshes
        self._serving = 0

    @classmethod
    def from_settings(cls, settings: TelegramSettings | None = None,
                      connections_per_dc: int = 4,
                      requests_per_connection: int = 2) -> TelethonTelegram:
        settings = settings or TelegramSettings()
        return cls(build_client(settings), request_timeout=settings.telegram_timeout,
                   connections_per_dc=connections_per_dc,
                   requests_per_connection=requests_per_connection)

    @property
    def pool(self) -> SenderPool:
        return self._pool

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
        await self._pool.close()
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
            raise as_telegram_error(exc, resolving=True) from exc
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
        """The media from the location the sync kept (no request), else from the message."""
        if entry.location is not None and entry.media_kind is not None:
            location = entry.location
            return RemoteMedia(
                entry=entry, kind=entry.media_kind, size=location.size,
                mime_type=entry.mime_type, file_name=entry.file_name,
                dc_id=location.dc_id, handle=location,
            )
        info = await self._media(entry)
        return RemoteMedia(
            entry=entry, kind=info.kind, size=info.size, mime_type=info.mime_type,
            file_name=info.file_name, dc_id=info.dc_id, handle=location_of(info),
        )

    async def _refreshed(self, media: RemoteMedia) -> FileLocation:
        """The same file with a fresh file reference (references expire after a while)."""
        info = await self._media(media.entry)
        if info.media_id != media.handle.id or info.size != media.size:
            # The message was edited to carry another file: the bytes on disk belong to
            # the old one, so only a fresh download can give a consistent file.
            raise PermanentError.of(
                ErrorCode.size_mismatch,
                "the message's media was replaced while it was downloading",
            )
        return location_of(info)

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
                    input_location(handle),
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
                except REFERENCE_EXPIRED as exc:
                    refreshes += 1
                    if refreshes > self._max_refreshes:
                        raise TransientError(
                            f"file reference rejected {refreshes} times ({rpc_name(exc)})"
                        ) from exc
                    handle = await self._refreshed(media)
                    continue  # same offset: nothing yielded is requested again
                except Exception as exc:
                    raise as_telegram_error(exc, resolving=False) from exc
                finally:
                    await _release(chunks)
                if offset < media.size:
                    raise TransientError(
                        f"Telegram ended the file at {offset} of {media.size} bytes"
                    )
        finally:
            self._serving -= 1


    @contextlib.asynccontextmanager
    async def parts(self, media: RemoteMedia) -> AsyncIterator[_TelethonFile]:
        self._serving += 1
        try:
            yield _TelethonFile(self, media)
        finally:
            self._serving -= 1

    async def _get_hashes(self, dc_id: int, location: Any, offset: int) -> list[Any]:
        sender = await self._pool.small(dc_id)
        async with asyncio.timeout(self._timeout):
            return await self._client._call(
                sender, functions.upload.GetFileHashesRequest(location, offset))

    async def _get_file(self, dc_id: int, location: Any, offset: int) -> bytes:
        async with self._pool.sender(dc_id) as sender:
            async with asyncio.timeout(self._timeout):
                result = await self._client._call(
                    sender, functions.upload.GetFileRequest(location, offset, PART_SIZE))
        if not isinstance(result, types.upload.File):  # a CDN redirect: never asked for
            raise TransientError(f"Telegram answered {type(result).__name__}")
        return result.bytes


class _TelethonFile(SharedFile):
    """One file fetched in parts (`PartSource`); what all its parts share lives here."""

    def __init__(self, port: TelethonTelegram, media: RemoteMedia) -> None:
        super().__init__(port._max_refreshes)
        self._port = port
        self._media = media
        self._handle = media.handle
        self.dc_id = media.dc_id or port.client.session.dc_id

    async def read(self, offset: int, length: int) -> bytes:
        self.check_part(offset, length)
        while True:
            generation, handle, dc_id = self._generation, self._handle, self.dc_id
            try:
                # Always 1 MiB: the last part is a short read (a smaller limit would
                # have to divide 1 MiB, and Telegram ends the file for us anyway).
                data = await self._port._get_file(dc_id, input_location(handle), offset)
            except REFERENCE_EXPIRED as exc:
                await self.refresh_once(generation, self._refresh, rpc_name(exc))
                continue
            except errors.FileMigrateError as exc:
                self._move(dc_id, exc)  # the whole file lives there: every part moves
                continue
            except Exception as exc:
                raise as_telegram_error(exc, resolving=False) from exc
            if len(data) != length:
                raise TransientError(
                    f"Telegram answered {len(data)} bytes at {offset}, {length} expected")
            return data

    async def hashes(self, offset: int, length: int) -> list[Range] | None:
        """Telegram's range hashes over the part, asked for until they cover it (each
        answer covers a few ranges from the asked offset)."""
        return await self.covering_hashes(offset, length, self._ranges)

    async def _ranges(self, position: int) -> list[Range]:
        while True:
            generation, handle, dc_id = self._generation, self._handle, self.dc_id
            try:
                ranges = await self._port._get_hashes(dc_id, input_location(handle), position)
            except REFERENCE_EXPIRED as exc:
                await self.refresh_once(generation, self._refresh, rpc_name(exc))
                continue
            except errors.FileMigrateError as exc:
                self._move(dc_id, exc)
                continue
            except (errors.FloodError, errors.ServerError, OSError, TimeoutError) as exc:
                raise as_telegram_error(exc, resolving=False) from exc
            except errors.RPCError:
                return []  # not offered for this file (photos, some old documents)
            return [(r.offset, r.limit, r.hash) for r in ranges]

    def _move(self, asked: int, exc: errors.FileMigrateError) -> None:
        if exc.new_dc == asked:
            raise TransientError(f"Telegram sent the file back to DC {asked}") from exc
        self.dc_id = exc.new_dc

    async def _refresh(self) -> None:
        self._handle = await self._port._refreshed(self._media)


async def _release(chunks: Any) -> None:
    """Return the exported sender a download borrowed (Telethon's download iterator only
    does it itself when a short read ends the file, not on errors or early exits)."""
    if getattr(chunks, "_sender", None) is not None:  # set once the first request is prepared
        await chunks.close()
