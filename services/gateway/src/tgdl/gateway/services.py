"""What the routes share, built by the app's lifespan: settings, NATS, the DB pool."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from fastapi import Request
from nats.aio.client import Client as NATS

from tgdl.contracts.config import chat_key, narrowed
from tgdl.db import catalog, readmodel
from tgdl.db.positions import until_reached
from tgdl.gateway.commands import CommandClient
from tgdl.gateway.errors import database_unavailable
from tgdl.gateway.freshness import Freshness
from tgdl.gateway.idempotency import Idempotency
from tgdl.gateway.security import Tokens
from tgdl.gateway.settings import GatewaySettings

log = logging.getLogger("tgdl.gateway")

NAMES_TTL = 5.0  # seconds a chat's other names are remembered (asked on every request)

# What a lost or stopped PostgreSQL raises (a refused or vanished socket, a closed
# connection, a server shutting down or starting up, no answer in time; asyncpg's
# InternalClientError too, seen when the server died in the middle of a query), and what
# a server that will not serve us says: its login refused (a changed password or access
# rule, for the pool's next connection), its database gone, its disk or memory full.
DB_OUTAGES: tuple[type[Exception], ...] = (
    OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError, asyncpg.InternalClientError,
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,
    asyncpg.exceptions.InvalidCatalogNameError,
    asyncpg.exceptions.InsufficientResourcesError,  # TooManyConnectionsError among them
)


@contextlib.contextmanager
def _outage_is_503(timeout: float) -> Iterator[None]:
    try:
        yield
    except TimeoutError:
        raise database_unavailable(
            f"no answer within {timeout:g} s (busy, or unreachable)") from None
    except DB_OUTAGES as exc:
        raise database_unavailable(str(exc) or type(exc).__name__) from None


class Database:
    """The read model's pool, with every outage turned into a 503 naming PostgreSQL and
    a deadline on getting a connection and on each query (its pool's command_timeout):
    a hung server must not hang requests."""

    def __init__(self, pool: asyncpg.Pool, timeout: float) -> None:
        self._pool = pool
        self._timeout = timeout

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        with _outage_is_503(self._timeout):
            async with self._pool.acquire(timeout=self._timeout) as conn:
                yield conn

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        async with self.acquire() as conn:
            return await conn.fetch(query, *args)

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        async with self.acquire() as conn:
            return await conn.fetchrow(query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        async with self.acquire() as conn:
            return await conn.fetchval(query, *args)

    async def close(self) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await self._pool.close()
        except (TimeoutError, *DB_OUTAGES):
            self._pool.terminate()


@dataclass(frozen=True)
class Services:
    settings: GatewaySettings
    nc: NATS
    pool: Database
    orchestrator: CommandClient
    freshness: Freshness
    idempotency: Idempotency
    tokens: Tokens  # signs the /media/ links of answers when tokens are on
    catalog: CommandClient | None = None  # the watch rule commands
    # chats -> (until when, the same chats by all their names)
    names_memo: dict[frozenset[str], tuple[float, frozenset[str]]] = field(
        default_factory=dict)

    async def every_name(self, chats: frozenset[str] | None) -> frozenset[str] | None:
        """`chats` with every other name of the same chats (tgdl.db.catalog.every_name):
        a chat allowed (or a token limited) by one of its names is read by all."""
        if not chats:
            return chats
        now = time.monotonic()
        memo = self.names_memo.get(chats)
        if memo is not None and memo[0] > now:
            return memo[1]
        named = await catalog.every_name(self.pool, chats) or chats
        if len(self.names_memo) > 1000:  # (one entry per token limit: few)
            self.names_memo.clear()
        self.names_memo[chats] = (now + NAMES_TTL, named)
        return named

    async def readable(self, token_chats: frozenset[str] | None) -> frozenset[str] | None:
        """The chats a caller may see: the allow-list narrowed by its token's chats, each
        chat by every name it was reached by."""
        return narrowed(await self.every_name(self.settings.allowed_chat_set),
                        await self.every_name(token_chats))

    async def view(self, chats: frozenset[str] | None, body: bytes) -> bytes:
        """A status body as this caller may see it: the files of chats it may not read
        lose their path and link; the links left are signed when tokens are on."""
        if chats is not None and b"download_url" in body:
            body = await self._hide_foreign(chats, body)
        return self.tokens.sign_json(body)

    async def _hide_foreign(self, chats: frozenset[str], body: bytes) -> bytes:
        data = json.loads(body)
        files = data.get("files") if "files" in data else [data]
        shown = [f for f in files if isinstance(f, dict) and f.get("download_url")]
        rows = await self.pool.fetch(
            "SELECT message_id, chat FROM catalog WHERE message_id = ANY($1::bigint[])",
            [f["message_id"] for f in shown])
        readable = {r["message_id"] for r in rows if chat_key(r["chat"]) in chats}
        for f in shown:
            if f["message_id"] not in readable:
                f.pop("download_url", None)
                f.pop("file_path", None)
        return json.dumps(data, separators=(",", ":")).encode()

    async def batch_visible(self, request: Request, batch_id: str) -> bool:
        """A token limited to chats sees and steers only batches all of whose files are
        in its chats (another's batch is as if it did not exist)."""
        chats = await token_chats(request)
        return chats is None or await readmodel.batch_within(self.pool, batch_id, chats)

    async def message_visible(self, request: Request, message_id: int) -> bool:
        """The same for one message: its chat is among the token's."""
        chats = await token_chats(request)
        if chats is None:
            return True
        chat = await self.pool.fetchval("SELECT chat FROM catalog WHERE message_id = $1",
                                        message_id)
        return chat is None or chat_key(chat) in chats

    async def until_projected(self, batch_id: str) -> bool:
        """Wait (briefly) until the read model knows a batch the orchestrator just
        accepted, so a status query right after the start finds it. The projector
        publishes a snapshot after writing it; subscribe first, then look. Best effort:
        the batch exists, so an outage here never turns its start into an error (a
        client would start it again); False when it was not seen in time."""
        try:
            sub = await self.nc.subscribe(self.settings.names.batch_progress(batch_id))
        except Exception as exc:  # NATS away: look once in the database instead
            log.debug("batch %s: no snapshot awaited: %r", batch_id, exc)
            return await self._projected(batch_id)
        try:
            if await self._projected(batch_id):
                return True
            try:
                await sub.next_msg(timeout=self.settings.projection_wait)
                return True
            except TimeoutError:
                return False
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _projected(self, batch_id: str) -> bool:
        try:
            return bool(await self.pool.fetchval(
                "SELECT 1 FROM batches WHERE batch_id = $1", batch_id))
        except Exception as exc:  # PostgreSQL away: the snapshot may still say it
            log.debug("batch %s: read model not checked: %r", batch_id, exc)
            return False

    async def until_current(self) -> bool:
        """Wait (briefly) until the read model has applied every batch event appended so
        far, so a status read right after a pause, resume, cancel or new setting shows it
        (the orchestrator answers once it appended). Best effort: the change is made, so
        an outage here never fails the answer; False when it was not seen in time."""
        stream = self.settings.names.events_stream
        try:
            target = (await self.nc.jetstream().stream_info(stream)).state.last_seq
            reached, _ = await until_reached(self.pool, {stream: target},
                                             self.settings.projection_wait)
        except Exception as exc:  # NATS or PostgreSQL away: answer anyway
            log.debug("read model not checked after a change: %r", exc)
            return False
        return reached


async def caller_chats(request: Request) -> frozenset[str] | None:
    """The chats the caller may see: the allow-list narrowed by its token's chats (each
    by every name it was reached by); None: any chat."""
    svc: Services = request.app.state.services
    return await svc.readable(getattr(request.state, "tgdl_chats", None))


async def token_chats(request: Request) -> frozenset[str] | None:
    """The chats the caller's token is limited to, by all their names (None: no limit)."""
    svc: Services = request.app.state.services
    return await svc.every_name(getattr(request.state, "tgdl_chats", None))


async def services(request: Request) -> Services:
    # async: FastAPI runs a synchronous dependency in a worker thread, a thread round
    # trip on every request (a fifth of the gateway's busy samples under status load)
    return request.app.state.services
