"""The simulated-Telegram adapter: the `TelegramPort` over HTTP to the simulated Telegram
server (``python -m tgdl.simtelegram``). It speaks HTTP only; the server's answers map to
the same errors a real account raises: FloodWait, TransientError, PermanentError."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from urllib.parse import quote

import httpx

from tgdl.contracts.catalog import CatalogEntry, MediaKind
from tgdl.contracts.errors import ErrorCode
from tgdl.downloader.telegram.port import (
    FloodWait,
    PermanentError,
    Range,
    RemoteMedia,
    SharedFile,
    TelegramError,
    TransientError,
)
from tgdl.telegram.senders import Lanes

_PERMANENT = {
    "message_not_found": ErrorCode.message_not_found,
    "message_deleted": ErrorCode.message_deleted,
    "access_denied": ErrorCode.access_denied,
    "no_media": ErrorCode.no_media,
}
_DETAILS = {
    ErrorCode.message_not_found: "Telegram has no message {tg} in chat {chat}",
    ErrorCode.message_deleted: "message {tg} in chat {chat} was deleted in Telegram",
    ErrorCode.access_denied: "the account cannot read chat {chat}",
    ErrorCode.no_media: "message {tg} in chat {chat} carries no downloadable media",
}
_REFERENCE_EXPIRED = "file_reference_expired"
CONNECTION_HEADER = "x-tgdl-connection"  # which of the account's connections a request uses
_MAX_REFRESHES = 3  # refetches of the message per stream before giving up for now


def _message_path(entry: CatalogEntry) -> str:
    return f"/chats/{quote(entry.chat, safe='')}/messages/{entry.telegram_message_id}"


def _error_of(response: httpx.Response) -> tuple[str, dict]:
    """The server's ``{"error": ...}`` body (the body must have been read)."""
    try:
        body = response.json()
    except ValueError:
        return "", {}
    return (str(body.get("error", "")), body) if isinstance(body, dict) else ("", {})


def _failure(response: httpx.Response, entry: CatalogEntry) -> TelegramError:
    """What a non-200 answer means for the downloader."""
    error, body = _error_of(response)
    where = {"tg": entry.telegram_message_id, "chat": entry.chat}
    if response.status_code == 420 or error == "flood_wait":
        return FloodWait(int(body.get("seconds", 1)))
    if error in _PERMANENT:
        code = _PERMANENT[error]
        return PermanentError.of(code, _DETAILS[code].format(**where))
    if response.status_code == 416:
        return PermanentError.of(
            ErrorCode.size_mismatch,
            f"the resume offset lies past the end of message {entry.telegram_message_id}",
        )
    if response.status_code >= 500 or response.status_code == 429:
        return TransientError(f"simulated Telegram answered {response.status_code}")
    return PermanentError.of(
        ErrorCode.internal,
        f"simulated Telegram answered {response.status_code} {error or response.text[:200]}",
    )


class SimulatedTelegram:
    """`TelegramPort` adapter for the simulated Telegram at `base_url`."""

    request_size: int = 512 * 1024

    def __init__(self, base_url: str, connections: int = 4,
                 requests_per_connection: int = 2) -> None:
        self._base_url = base_url.rstrip("/")
        self._client: httpx.AsyncClient | None = None
        self._open_streams = 0
        # The simulated account has one data center. HTTP has no MTProto connection that
        # carries several requests, so each request names the connection it stands for
        # and the server paces the requests of one connection together.
        self._lanes = Lanes(connections, requests_per_connection)
        self._name = secrets.token_hex(4)

    async def start(self) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self._base_url,
                # reads may wait behind a paced, busy server; connecting should be instant
                timeout=httpx.Timeout(30.0, connect=5.0),
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=32),
            )

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def serving(self) -> int:
        return self._open_streams

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError("SimulatedTelegram.start() was not called")
        return self._client

    async def resolve(self, entry: CatalogEntry) -> RemoteMedia:
        """The media from the location the seed kept (no request), else from the message."""
        location = entry.location
        if location is not None and entry.media_kind is not None:
            return RemoteMedia(
                entry=entry, kind=entry.media_kind, size=location.size,
                mime_type=entry.mime_type, file_name=entry.file_name, dc_id=location.dc_id,
            )
        return await self._describe(entry)

    async def _describe(self, entry: CatalogEntry) -> RemoteMedia:
        """Ask for the message (as Telegram's messages.getMessages): also how an expired
        file reference is refreshed."""
        try:
            response = await self._http().get(_message_path(entry))
        except httpx.TransportError as exc:
            raise TransientError(f"simulated Telegram unreachable: {exc!r}") from exc
        if response.status_code != 200:
            raise _failure(response, entry)
        media = response.json().get("media")
        if media is None:
            raise PermanentError.of(
                ErrorCode.no_media, _DETAILS[ErrorCode.no_media].format(
                    tg=entry.telegram_message_id, chat=entry.chat)
            )
        return RemoteMedia(
            entry=entry,
            kind=MediaKind(media["kind"]),
            size=int(media["size"]),
            mime_type=media.get("mime_type"),
            file_name=media.get("file_name"),
            dc_id=media.get("dc_id"),
        )

    async def stream(self, media: RemoteMedia, offset: int) -> AsyncIterator[bytes]:
        """The media's bytes from `offset`, re-chunked to at most `request_size`. Closing
        the generator closes the HTTP response (and its connection) at once."""
        expected = media.size - offset
        self._open_streams += 1
        try:
            async with self._content(media, offset) as response:
                received = 0
                async for chunk in response.aiter_bytes(self.request_size):
                    received += len(chunk)
                    yield chunk
                if received != expected:
                    raise TransientError(f"stream ended after {received} of {expected} bytes")
        except httpx.TransportError as exc:
            raise TransientError(f"download interrupted: {exc!r}") from exc
        finally:
            self._open_streams -= 1

    @asynccontextmanager
    async def _content(self, media: RemoteMedia, offset: int) -> AsyncIterator[httpx.Response]:
        """The streaming 200 answer for the bytes from `offset`. An expired file reference
        is refreshed by fetching the message again, as with Telegram."""
        url = f"{_message_path(media.entry)}/content"
        for attempt in range(_MAX_REFRESHES + 1):
            async with self._http().stream("GET", url, params={"offset": offset}) as response:
                if response.status_code == 200:
                    _check_length(response, media.size - offset)
                    yield response
                    return
                await response.aread()
                if _error_of(response)[0] != _REFERENCE_EXPIRED:
                    raise _failure(response, media.entry)
            if attempt == _MAX_REFRESHES:
                raise TransientError("the file reference kept expiring")
            await self._describe(media.entry)
        raise AssertionError("unreachable")


    @asynccontextmanager
    async def parts(self, media: RemoteMedia) -> AsyncIterator[_SimulatedFile]:
        self._open_streams += 1
        try:
            yield _SimulatedFile(self, media)
        finally:
            self._open_streams -= 1

    @asynccontextmanager
    async def _range(self, media: RemoteMedia, offset: int, length: int
                     ) -> AsyncIterator[httpx.Response]:
        """The streaming answer for one part, on one of the account's connections. Its
        body is read chunk by chunk and kept nowhere: an httpx response sits in a
        reference cycle (with its stream) that only the cyclic garbage collector breaks,
        so a part's body kept on it outlived the part, and a downloader's memory grew
        with the size of the file."""
        url = f"{_message_path(media.entry)}/content"
        async with self._lanes.lane() as lane:
            try:
                async with self._http().stream(
                    "GET", url, params={"offset": offset, "limit": length},
                    headers={CONNECTION_HEADER: f"{self._name}-{lane}"},
                ) as streamed:
                    yield streamed
            except httpx.TransportError as exc:
                raise TransientError(f"part at {offset} interrupted: {exc!r}") from exc

    async def _hashes(self, media: RemoteMedia, offset: int) -> list[dict]:
        # Not a pool connection: a few hundred bytes, not worth a slot a part could use
        url = f"{_message_path(media.entry)}/hashes"
        try:
            response = await self._http().get(url, params={"offset": offset})
        except httpx.TransportError as exc:
            raise TransientError(f"hashes at {offset} interrupted: {exc!r}") from exc
        if response.status_code == 404 and _error_of(response)[0] == "not_found":
            return []  # a server without range hashes
        if response.status_code != 200:
            raise _failure(response, media.entry)
        return response.json()


class _SimulatedFile(SharedFile):
    """One file fetched in parts over range requests (`PartSource`)."""

    def __init__(self, port: SimulatedTelegram, media: RemoteMedia) -> None:
        super().__init__(_MAX_REFRESHES)
        self._port = port
        self._media = media

    async def read(self, offset: int, length: int) -> bytearray:  # bytes-like, not copied
        body = bytearray()
        async with aclosing(self.pieces(offset, length)) as pieces:
            async for chunk in pieces:
                body += chunk
        return body

    async def pieces(self, offset: int, length: int) -> AsyncIterator[bytes]:
        """The part's bytes as they stream in."""
        self.check_part(offset, length)
        while True:
            generation = self._generation
            async with self._port._range(self._media, offset, length) as response:
                if response.status_code == 200:
                    received = 0
                    async for chunk in response.aiter_bytes():
                        received += len(chunk)
                        if received > length:
                            break
                        yield chunk
                    if received != length:
                        raise TransientError(f"part at {offset}: {received} of {length} bytes")
                    return
                await response.aread()
                if _error_of(response)[0] != _REFERENCE_EXPIRED:
                    raise _failure(response, self._media.entry)
            await self.refresh_once(generation, self._refresh, _REFERENCE_EXPIRED)

    async def _refresh(self) -> None:
        await self._port._describe(self._media.entry)

    async def hashes(self, offset: int, length: int) -> list[Range] | None:
        """The server's range hashes over the part, asked for until they cover it."""
        return await self.covering_hashes(offset, length, self._ranges)

    async def _ranges(self, position: int) -> list[Range]:
        return [(r["offset"], r["limit"], bytes.fromhex(r["sha256"]))
                for r in await self._port._hashes(self._media, position)]


def _check_length(response: httpx.Response, expected: int) -> None:
    announced = response.headers.get("content-length")
    if announced is not None and int(announced) != expected:
        raise PermanentError.of(
            ErrorCode.size_mismatch,
            f"Telegram announced {announced} bytes, {expected} were expected",
        )
