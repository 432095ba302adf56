"""The simulated Telegram over HTTP: messages keyed by chat and Telegram message id,
content streamed at a per-connection bandwidth after a latency, injectable faults, and
serving statistics.

Routes:
    GET  /chats/{chat}/messages/{tg_id}                  describe a message and its media
    GET  /chats/{chat}/messages/{tg_id}/content?offset=N[&limit=L]
                                                          its bytes from N (L of them at most)
    GET  /chats/{chat}/messages/{tg_id}/hashes?offset=N   SHA-256 of the 128 KiB ranges from N
    GET  /catalog[?after=N]                               every message as a sync saw it
                                                          (those with an id above N)
    GET  /chats                                           each chat and its newest message
    POST /chats/{chat}/messages                           post a new message to a chat
    GET  /stats, POST /stats/reset                        what is being served
    GET  /faults, POST /faults, DELETE /faults            injected faults
    GET  /healthz
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tgdl.simtelegram import content
from tgdl.simtelegram.catalog import NewMessage, SimMessage, demo_catalog
from tgdl.simtelegram.faults import FaultRequest, Faults
from tgdl.simtelegram.settings import SimSettings
from tgdl.simtelegram.stats import ServingStats

PIECE_SIZE = 64 * 1024  # largest body piece sent at once
CONNECTION_HEADER = "x-tgdl-connection"
_BURST = 0.05  # seconds of bandwidth a stream may catch up after a stall


class SimulatedDrop(Exception):
    """Raised inside a content stream to cut the connection abruptly (the server closes
    the socket without finishing the body)."""


class _QuietDrops(logging.Filter):
    """Keep the server log free of the tracebacks of drops that were asked for."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], SimulatedDrop))


def _quiet_simulated_drops() -> None:
    server_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietDrops) for f in server_log.filters):
        server_log.addFilter(_QuietDrops())


def _error(status: int, error: str, **extra: object) -> JSONResponse:
    return JSONResponse({"error": error, **extra}, status_code=status)


class Simulator:
    """State of one simulated Telegram: its catalog, injected faults and statistics."""

    def __init__(self, settings: SimSettings, catalog: Sequence[SimMessage]) -> None:
        self.settings = settings
        self.catalog = list(catalog)
        self.by_id = {m.message_id: m for m in self.catalog}
        self._by_address = {(m.chat, m.telegram_message_id): m for m in self.catalog}
        self.faults = Faults()
        self.stats = ServingStats()
        self.account_pacer = _Pacer()  # every connection of the account shares this cap
        # A client's MTProto-like connection carries several requests: those naming the
        # same connection (CONNECTION_HEADER) share its pacing and count as one.
        self._pacers: dict[str, _Pacer] = {}
        self._open: Counter[str] = Counter()  # connection -> content answers being sent
        self._streams = itertools.count()  # names requests that name no connection

    @property
    def bandwidth(self) -> int:
        override = self.faults.bandwidth
        return self.settings.bandwidth if override is None else override

    @property
    def account_bandwidth(self) -> int:
        override = self.faults.account_bandwidth
        return self.settings.account_bandwidth if override is None else override

    @property
    def max_connections(self) -> int:
        override = self.faults.max_connections
        return self.settings.max_connections if override is None else override

    @property
    def latency(self) -> float:
        override = self.faults.latency
        return self.settings.latency if override is None else override

    def post(self, chat: str, new: NewMessage) -> SimMessage:
        message_id = max(self.by_id, default=0) + 1
        message = new.message(message_id, chat)
        self.catalog.append(message)
        self.by_id[message_id] = message
        self._by_address[(chat, message.telegram_message_id)] = message
        return message

    def find(self, chat: str, tg_id: str) -> SimMessage | None:
        try:
            return self._by_address.get((chat, int(tg_id)))
        except ValueError:
            return None

    def refusal(self, message: SimMessage | None) -> JSONResponse | None:
        """The error Telegram answers for this message, or None if it can be read."""
        if message is None:
            return _error(404, "message_not_found")
        if message.forbidden:
            return _error(403, "access_denied")
        if message.deleted or message.message_id in self.faults.deleted:
            return _error(410, "message_deleted")
        return None

    @property
    def connections(self) -> int:
        return len(self._open)

    @property
    def open_connections(self) -> set[str]:
        return set(self._open)

    def _pacer(self, connection: str | None) -> _Pacer:
        if connection is None:
            return _Pacer()
        if connection not in self._pacers and len(self._pacers) >= 4096:
            idle = [key for key in self._pacers if key not in self._open]
            for key in idle[: len(idle) // 2 + 1]:
                del self._pacers[key]
        return self._pacers.setdefault(connection, _Pacer())

    async def stream(self, message: SimMessage, offset: int, drop_after: int | None,
                     end: int | None = None, corrupt: bool = False,
                     connection: str | None = None, slow: int | None = None
                     ) -> AsyncIterator[bytes]:
        """The message's bytes from `offset` to `end`, paced per connection and per
        account; counted as serving while open. The server cancels this generator as soon
        as the client disconnects, so `finally` runs promptly."""
        message_id, size = message.message_id, message.size or 0
        end = size if end is None else min(end, size)
        self.stats.opened(message_id)
        key = connection or f"stream-{next(self._streams)}"
        self._open[key] += 1
        try:
            pacer = self._pacer(connection)
            limits = [(pacer, self.bandwidth), (self.account_pacer, self.account_bandwidth)]
            if slow is not None:  # this answer alone trickles
                limits.append((_Pacer(), slow))
            sent = 0
            for piece in _pieces(message.file_id, end, offset):  # a forward: its file's bytes
                cut = drop_after is not None and sent + len(piece) >= drop_after
                if cut:
                    piece = piece[: drop_after - sent]
                if piece:
                    await _paced(len(piece), *limits)
                    if corrupt and sent == 0:
                        piece = bytes([piece[0] ^ 0xFF]) + piece[1:]
                    yield piece
                    sent += len(piece)
                    self.stats.sent(message_id, len(piece))
                if cut:
                    raise SimulatedDrop(f"message {message_id} dropped after {drop_after} bytes")
        finally:
            self._open[key] -= 1
            if self._open[key] <= 0:
                del self._open[key]
            self.stats.closed(message_id)


def _pieces(file_id: int, size: int, offset: int) -> Iterator[bytes]:
    """Pieces of at most PIECE_SIZE; holds one 1 MiB chunk at a time."""
    for part in content.iter_range(file_id, size, offset, size - offset):
        for start in range(0, len(part), PIECE_SIZE):
            yield part[start:start + PIECE_SIZE]


class _Pacer:
    """Paces a connection (or the whole account) to `bandwidth` bytes/s (0 = unlimited)."""

    def __init__(self) -> None:
        self._due = time.monotonic()

    def reserve(self, size: int, bandwidth: int) -> float:
        """When `size` more bytes may have gone out."""
        now = time.monotonic()
        if bandwidth <= 0:
            self._due = now
            return now
        self._due = max(self._due, now - _BURST) + size / bandwidth
        return self._due


async def _paced(size: int, *limits: tuple[_Pacer, int]) -> None:
    """Wait until every limit allows `size` more bytes: the slowest decides (waiting for
    each in turn would add the waits up and undercut both)."""
    due = max(pacer.reserve(size, bandwidth) for pacer, bandwidth in limits)
    await asyncio.sleep(max(0.0, due - time.monotonic()))  # 0: others and disconnects go


def _sim(request: Request) -> Simulator:
    return request.app.state.sim


async def describe_message(request: Request) -> Response:
    sim = _sim(request)
    await asyncio.sleep(sim.latency)
    message = sim.find(request.path_params["chat"], request.path_params["tg_id"])
    if message is not None:
        sim.stats.looked_up(message.message_id)
    refusal = sim.refusal(message)
    if refusal is not None:
        return refusal
    assert message is not None
    media = None
    if message.media_kind is not None:
        media = {
            "kind": message.media_kind.value,
            "size": message.size,
            "mime_type": message.mime_type,
            "file_name": message.file_name,
            "dc_id": message.dc_id,
        }
    return JSONResponse(
        {"chat": message.chat, "telegram_message_id": message.telegram_message_id,
         "media": media}
    )


def _offset(raw: str) -> int | None:
    if not (raw.isascii() and raw.isdigit()):
        return None
    try:
        return int(raw)
    except ValueError:  # more digits than Python converts
        return None


async def _file_request(request: Request, sim: Simulator, message: SimMessage | None
                        ) -> tuple[SimMessage, int] | Response:
    """What the content and hashes routes check first, in Telegram's order: a valid
    offset, the latency, then whether the message can be read and carries a file."""
    offset = _offset(request.query_params.get("offset", "0"))
    if offset is None:
        return _error(422, "invalid_offset", detail="offset must be an integer >= 0")
    await asyncio.sleep(sim.latency)
    refusal = sim.refusal(message)
    if refusal is not None:
        return refusal
    assert message is not None
    if message.media_kind is None or message.size is None:
        return _error(404, "no_media")
    return message, offset


async def message_content(request: Request) -> Response:
    sim = _sim(request)
    message = sim.find(request.path_params["chat"], request.path_params["tg_id"])
    if message is not None:
        sim.stats.requested(message.message_id, message.file_id)
    limit = _offset(request.query_params.get("limit", "0"))
    if limit is None:
        return _error(422, "invalid_limit", detail="limit must be an integer >= 0 (0: all)")
    found = await _file_request(request, sim, message)
    if isinstance(found, Response):
        return found
    message, offset = found
    if offset > message.size:
        return _error(416, "offset_out_of_range", size=message.size)
    seconds = sim.faults.take_flood_wait(message.message_id)
    if seconds is not None:
        return _error(420, "flood_wait", seconds=seconds)
    connection = request.headers.get(CONNECTION_HEADER)
    if (sim.max_connections and sim.connections >= sim.max_connections
            and connection not in sim.open_connections):
        # Telegram's answer to an account that opens too many file connections at once
        return _error(420, "flood_wait", seconds=1)
    if sim.faults.take_expired_reference(message.message_id):
        return _error(400, "file_reference_expired")
    drop_after = sim.faults.take_drop(message.message_id)
    end = min(message.size, offset + limit) if limit else message.size
    return StreamingResponse(
        sim.stream(message, offset, drop_after, end,
                   sim.faults.take_corrupt(message.message_id, offset), connection,
                   sim.faults.take_slow(message.message_id, offset)),
        media_type="application/octet-stream",
        headers={"content-length": str(end - offset)},
    )


HASH_RANGE = 128 * 1024  # as Telegram's upload.getFileHashes
HASHES_PER_ANSWER = 8


async def message_hashes(request: Request) -> Response:
    """SHA-256 of the fixed ranges from the one holding `offset`, a few per answer (as
    Telegram's upload.getFileHashes)."""
    sim = _sim(request)
    found = await _file_request(
        request, sim, sim.find(request.path_params["chat"], request.path_params["tg_id"]))
    if isinstance(found, Response):
        return found
    message, offset = found
    start = offset - offset % HASH_RANGE
    stop = min(message.size, start + HASH_RANGE * HASHES_PER_ANSWER)
    ranges = [
        {"offset": o, "limit": HASH_RANGE, "sha256": hashlib.sha256(
            content.read(message.file_id, message.size, o, HASH_RANGE)).hexdigest()}
        for o in range(start, stop, HASH_RANGE)
    ]
    return JSONResponse(ranges)


async def catalog(request: Request) -> Response:
    after = _offset(request.query_params.get("after", "0"))
    if after is None:
        return _error(422, "invalid_after", detail="after must be an integer >= 0")
    return JSONResponse([m.to_entry().model_dump(mode="json")
                         for m in _sim(request).catalog if m.message_id > after])


async def chats(request: Request) -> Response:
    newest: dict[str, int] = {}
    for m in _sim(request).catalog:
        newest[m.chat] = max(newest.get(m.chat, 0), m.telegram_message_id)
    return JSONResponse([{"chat": c, "newest_telegram_id": n} for c, n in newest.items()])


async def post_message(request: Request) -> Response:
    """A new message in a chat (a new chat if there is none of that name), as if someone
    posted it: the catalog service finds it on its next sync."""
    try:
        body = NewMessage.model_validate(json.loads(await request.body()))
    except json.JSONDecodeError:
        return _error(422, "invalid_json", detail="the body must be a JSON object")
    except ValidationError as exc:
        details = exc.errors(include_url=False, include_context=False, include_input=False)
        return _error(422, "invalid_message", detail=details)
    message = _sim(request).post(request.path_params["chat"], body)
    return JSONResponse(message.to_entry().model_dump(mode="json"), status_code=201)


async def get_stats(request: Request) -> Response:
    return JSONResponse(_sim(request).stats.snapshot())


async def reset_stats(request: Request) -> Response:
    sim = _sim(request)
    sim.stats.reset()
    return JSONResponse(sim.stats.snapshot())


async def get_faults(request: Request) -> Response:
    return JSONResponse(_sim(request).faults.describe())


async def add_faults(request: Request) -> Response:
    sim = _sim(request)
    try:
        body = json.loads(await request.body())
        faults = FaultRequest.model_validate(body)
    except json.JSONDecodeError:
        return _error(422, "invalid_json", detail="the body must be a JSON object")
    except ValidationError as exc:
        details = exc.errors(include_url=False, include_context=False, include_input=False)
        return _error(422, "invalid_faults", detail=details)
    unknown = sorted(faults.message_ids() - sim.by_id.keys())
    if unknown:
        return _error(422, "unknown_message", detail=f"not in the catalog: {unknown}")
    sim.faults.add(faults)
    return JSONResponse(sim.faults.describe())


async def clear_faults(request: Request) -> Response:
    sim = _sim(request)
    sim.faults.clear()
    return JSONResponse(sim.faults.describe())


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    error = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse(
        {"error": error, "detail": exc.detail}, status_code=exc.status_code, headers=exc.headers
    )


async def _internal_error(request: Request, exc: Exception) -> Response:
    return _error(500, "internal_error")


def create_app(
    settings: SimSettings | None = None, catalog_messages: Sequence[SimMessage] | None = None
) -> Starlette:
    """The simulated Telegram; its catalog is the demo catalog the settings describe
    unless `catalog_messages` is given."""
    settings = settings or SimSettings()
    if catalog_messages is None:
        catalog_messages = demo_catalog(
            settings.count, settings.min_size, settings.max_size, settings.seed,
            forwards=settings.forwards,
        )
    _quiet_simulated_drops()
    app = Starlette(
        routes=[
            Route("/chats/{chat}/messages/{tg_id}", describe_message, methods=["GET"]),
            Route("/chats/{chat}/messages/{tg_id}/content", message_content, methods=["GET"]),
            Route("/chats/{chat}/messages/{tg_id}/hashes", message_hashes, methods=["GET"]),
            Route("/catalog", catalog, methods=["GET"]),
            Route("/chats", chats, methods=["GET"]),
            Route("/chats/{chat}/messages", post_message, methods=["POST"]),
            Route("/stats", get_stats, methods=["GET"]),
            Route("/stats/reset", reset_stats, methods=["POST"]),
            Route("/faults", get_faults, methods=["GET"]),
            Route("/faults", add_faults, methods=["POST"]),
            Route("/faults", clear_faults, methods=["DELETE"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
    )
    app.state.sim = Simulator(settings, catalog_messages)
    return app
