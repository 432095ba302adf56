"""The cap on open event streams over real HTTP (every client here shares 127.0.0.1, as
clients behind one proxy do): with tokens on it counts per token, so one token at its cap
leaves another's streams open; without tokens it counts per address."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import uvicorn
from waiting import until

from tgdl.contracts.catalog import CatalogEntry, MediaKind
from tgdl.contracts.events import BatchStarted
from tgdl.db.connection import connect
from tgdl.gateway.app import create_app
from tgdl.gateway.settings import GatewaySettings
from tgdl.launcher.embedded import free_port
from tgdl.launcher.prepare import prepare
from tgdl.projector.fold import fold_event
from tgdl.projector.sql import apply_changes

AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
EVENTS = "/api/media/batch-events/b"


@contextlib.asynccontextmanager
async def gateway(servers, isolation, **extra) -> AsyncIterator[str]:
    """A gateway over real HTTP with batch b open (its stream stays open); its URL."""
    port = free_port()
    settings = GatewaySettings(
        nats_url=servers.nats_url, database_url=servers.database_url,
        namespace=isolation.namespace, db_schema=isolation.schema,
        media_root=isolation.media_root, http_port=port, max_event_streams=1, **extra)
    await prepare(settings)
    conn = await connect(settings.database_url, settings.db_schema)
    try:
        entry = CatalogEntry(message_id=1, chat="chan", telegram_message_id=901,
                             media_kind=MediaKind.document, file_name="a.jpg", size=6)
        await apply_changes(conn, fold_event(BatchStarted(
            batch_id="b", at=AT, kind="batch", max_concurrent=1, force=False,
            requested_ids=[1], to_download=[entry], already_downloaded=[],
            failed_to_start=[])))
    finally:
        await conn.close()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    try:
        await until(lambda: server.started, 20, what="gateway started")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def first_event(client: httpx.AsyncClient, stack: contextlib.AsyncExitStack,
                      path: str, headers: dict[str, str] | None = None) -> int:
    """Open an event stream and keep it open (on `stack`); its status, once the first
    event arrived when it is 200."""
    response = await stack.enter_async_context(client.stream("GET", path, headers=headers))
    if response.status_code == 200:
        lines = response.aiter_lines()
        stack.push_async_callback(lines.aclose)  # collected, it would close the stream
        while not (await anext(lines)).startswith("data: "):
            pass
    else:
        await response.aread()
    return response.status_code


async def test_with_tokens_the_cap_counts_per_token_not_per_address(servers, isolation):
    async with (gateway(servers, isolation, api_token="one, two") as url,
                httpx.AsyncClient(base_url=url, timeout=10) as client,
                contextlib.AsyncExitStack() as stack):
        assert await first_event(client, stack, EVENTS, {"Authorization": "Bearer one"}) == 200
        # the same token at its cap, by header or in the query
        assert await first_event(client, stack, EVENTS,
                                 {"Authorization": "Bearer one"}) == 429
        assert await first_event(client, stack, f"{EVENTS}?access_token=one") == 429
        # another token from the same address is not counted against it
        assert await first_event(client, stack, f"{EVENTS}?access_token=two") == 200
        refused = await client.get(EVENTS, headers={"Authorization": "Bearer two"})
        assert refused.status_code == 429
        assert refused.json()["error"] == "too_many_requests" and "token" in \
            refused.json()["detail"]


async def test_without_tokens_the_cap_counts_per_address(servers, isolation):
    async with (gateway(servers, isolation) as url,
                httpx.AsyncClient(base_url=url, timeout=10) as client,
                contextlib.AsyncExitStack() as stack):
        assert await first_event(client, stack, EVENTS) == 200
        refused = await client.get(EVENTS)
        assert refused.status_code == 429 and "client address" in refused.json()["detail"]
