"""The gateway while a server it needs is down, against real servers that really stop:
503 naming what is down (with Retry-After), never a 500, and a `stale` status when the
read model cannot be current."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import nats
import pytest
from waiting import until

from tgdl.bus.topology import QueuePolicy, ensure_topology
from tgdl.contracts.catalog import CatalogEntry, MediaKind
from tgdl.contracts.events import BatchStarted
from tgdl.db.connection import connect
from tgdl.db.positions import save_positions
from tgdl.db.schema import migrate_database
from tgdl.gateway.app import create_app
from tgdl.gateway.errors import ApiError
from tgdl.gateway.services import Database
from tgdl.gateway.settings import GatewaySettings
from tgdl.launcher.embedded import start_nats, start_postgres
from tgdl.projector.fold import fold_event
from tgdl.projector.sql import apply_changes

AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
READS = ["/api/media/batch-status/b", "/api/media/status/1", "/api/messages"]


def settings_for(nats_url: str, database_url: str, isolation, **extra) -> GatewaySettings:
    return GatewaySettings(nats_url=nats_url, database_url=database_url,
                           namespace=isolation.namespace, db_schema=isolation.schema,
                           media_root=isolation.media_root, command_timeout=2.0,
                           projection_wait=0.3, **extra)


@contextlib.asynccontextmanager
async def gateway(settings: GatewaySettings):
    app = create_app(settings)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://localhost") as client:
        yield client


async def a_batch(settings: GatewaySettings) -> None:
    """Batch b with message 1 pending, written as the projector would."""
    await migrate_database(settings.database_url, settings.db_schema)
    db = await connect(settings.database_url, settings.db_schema)
    try:
        entry = CatalogEntry(message_id=1, chat="chan", telegram_message_id=901,
                             media_kind=MediaKind.photo, file_name="p1.jpg", size=1000)
        await apply_changes(db, fold_event(BatchStarted(
            batch_id="b", at=AT, kind="batch", max_concurrent=1, force=False,
            requested_ids=[1], to_download=[entry], already_downloaded=[],
            failed_to_start=[])))
    finally:
        await db.close()


def assert_unavailable(response: httpx.Response, error: str, names: str) -> dict:
    assert response.status_code == 503, response.text
    assert "Traceback" not in response.text
    assert int(response.headers["Retry-After"]) > 0
    body = response.json()
    assert body["error"] == error and names in body["detail"] and body["suggestion"]
    return body


async def test_reads_are_503_naming_postgres_while_it_is_down(servers, isolation, tmp_path):
    pg = start_postgres(tmp_path / "pg")
    settings = settings_for(servers.nats_url, pg.url, isolation, db_timeout=2.0)
    try:
        await a_batch(settings)
        async with gateway(settings) as client:
            for url in READS:
                assert (await client.get(url)).status_code == 200, url
            pg.stop()
            for url in READS:
                body = assert_unavailable(await client.get(url), "database_unavailable",
                                          "PostgreSQL")
                assert body["unavailable"] == "postgres"
            health = await client.get("/healthz")
            assert health.status_code == 503
            # what went wrong, not the name of the error that carries it
            assert health.json()["postgres"].startswith("down: PostgreSQL is unreachable: ")
    finally:
        pg.stop()


async def test_commands_are_503_naming_nats_while_it_is_down(servers, isolation, tmp_path):
    server = start_nats(tmp_path / "nats", sync_always=False)
    settings = settings_for(server.url, servers.database_url, isolation)
    await a_batch(settings)
    try:
        async with gateway(settings) as client:
            server.process.send_signal(signal.SIGKILL)
            server.process.wait()
            for method, url in [("POST", "/api/media/batch-download"),
                                ("POST", "/api/media/batch-cancel/batch_1"),
                                ("POST", "/api/media/cancel/1")]:
                response = await client.request(method, url, json={"message_ids": [1]})
                body = assert_unavailable(response, "nats_unavailable", "NATS")
                assert body["unavailable"] == "nats"
            # a start that may be repeated safely: its key's store is on NATS too
            response = await client.post("/api/media/batch-download", json={
                "message_ids": [1]}, headers={"Idempotency-Key": "start-once"})
            body = assert_unavailable(response, "nats_unavailable", "NATS")
            assert body["unavailable"] == "nats"
            # Reads still answer from PostgreSQL, but say they cannot be current.
            status = await client.get("/api/media/batch-status/b")
            assert status.status_code == 200
            assert status.json()["stale"] is True and "NATS" in status.json()["stale_reason"]
            single = (await client.get("/api/media/status/1")).json()
            assert single["stale"] is True
    finally:
        server.stop()


async def test_a_connection_lost_during_a_command_is_503_naming_nats(servers, isolation,
                                                                      tmp_path):
    server = start_nats(tmp_path / "nats", sync_always=False)
    settings = settings_for(server.url, servers.database_url, isolation)
    await migrate_database(settings.database_url, settings.db_schema)
    other = await nats.connect(server.url, allow_reconnect=False)
    try:
        async def die(msg) -> None:  # the server dies while the command waits for its answer
            os.kill(server.process.pid, signal.SIGKILL)

        await other.subscribe(settings.names.cmd_batch_start, cb=die)
        await other.flush()
        async with gateway(settings) as client:
            response = await client.post("/api/media/batch-download",
                                         json={"message_ids": [1, 2]})
            assert_unavailable(response, "nats_unavailable", "NATS")
    finally:
        with contextlib.suppress(Exception):
            await other.close()
        server.stop()


async def test_status_is_stale_while_the_projector_lags_the_streams(servers, isolation, nc):
    settings = settings_for(servers.nats_url, servers.database_url, isolation,
                            stale_after=0.5)
    names = settings.names
    await ensure_topology(nc.jetstream(), names, QueuePolicy())
    await a_batch(settings)
    async with gateway(settings) as client:
        async def status() -> dict:
            response = await client.get("/api/media/batch-status/b")
            assert response.status_code == 200
            return response.json()

        assert "stale" not in await status()
        # An event nobody projects: the read model falls behind the stream.
        ack = await nc.jetstream().publish(names.batch_events("b"), b"{}")
        lagging = await until(lambda: _stale(status), within=10, what="stale status")
        assert names.events_stream in lagging["stale_reason"]
        # what it does not know yet may exist already: not a 404
        for url in ("/api/media/batch-status/batch_new", "/api/media/status/99",
                    "/api/media/batch-events/batch_new"):
            body = assert_unavailable(await client.get(url), "read_model_behind",
                                      "cannot be current")
            assert body["unavailable"] == "read_model", url
        db = await connect(settings.database_url, settings.db_schema)
        try:
            await save_positions(db, {names.events_stream: ack.seq}, {})
        finally:
            await db.close()
        await until(lambda: _current(status), within=10, what="current status")
        gone = await client.get("/api/media/batch-status/batch_new")
        assert (gone.status_code, gone.json()["error"]) == (404, "batch_not_found")


async def _stale(status) -> dict | None:
    body = await status()
    return body if body.get("stale") else None


async def _current(status) -> bool:
    return "stale" not in await status()



class _DyingPool:
    """A pool whose server dies in the middle of a query, as asyncpg reports it then."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    @contextlib.asynccontextmanager
    async def acquire(self, **_: object):
        raise self.exc
        yield


@pytest.mark.parametrize("exc", [
    asyncpg.InternalClientError("cannot switch to state 12; another operation is in progress"),
    asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),
    asyncpg.exceptions.AdminShutdownError("terminating connection"),
    ConnectionRefusedError(111, "Connection refused"),
])
async def test_every_way_a_dying_database_fails_is_a_503(exc):
    with pytest.raises(ApiError) as raised:
        await Database(_DyingPool(exc), timeout=1.0).fetchval("SELECT 1")
    assert raised.value.status == 503 and raised.value.body.error == "database_unavailable"


async def test_a_read_postgresql_does_not_answer_in_time_is_a_503(servers, isolation):
    """A hung server (a network cut, a frozen host, here a lock nobody lets go of) must
    not hang the request: each query has the gateway's db_timeout."""
    settings = settings_for(servers.nats_url, servers.database_url, isolation,
                            db_timeout=0.5)
    await a_batch(settings)
    holder = await connect(settings.database_url, settings.db_schema)
    try:
        async with gateway(settings) as client:
            assert (await client.get("/api/media/batch-status/b")).status_code == 200
            tx = holder.transaction()
            await tx.start()
            await holder.execute("LOCK TABLE batches IN ACCESS EXCLUSIVE MODE")
            body = assert_unavailable(await client.get("/api/media/batch-status/b"),
                                      "database_unavailable", "PostgreSQL")
            assert "no answer within 0.5 s" in body["detail"]
            await tx.rollback()
            assert (await client.get("/api/media/batch-status/b")).status_code == 200
    finally:
        await holder.close()


@pytest.mark.parametrize(("user", "database"), [("nobody_here", None), (None, "no_such_db")])
async def test_a_server_that_will_not_serve_us_is_a_503_not_a_500(servers, user, database):
    """A login the server refuses (a changed password, role or access rule) or a database
    it no longer has, for the next connection the pool opens: PostgreSQL is unusable."""
    url = urlsplit(servers.database_url)
    netloc = url.netloc if user is None else f"{user}@{url.netloc.rpartition('@')[2]}"
    path = url.path if database is None else f"/{database}"
    pool = await asyncpg.create_pool(urlunsplit(url._replace(netloc=netloc, path=path)),
                                     min_size=0)
    try:
        with pytest.raises(ApiError) as raised:
            await Database(pool, timeout=5.0).fetchval("SELECT 1")
    finally:
        await pool.close()
    assert raised.value.status == 503 and raised.value.body.error == "database_unavailable"


async def test_a_gateway_started_during_an_outage_waits_then_serves(servers, isolation,
                                                                    tmp_path, caplog):
    pg = start_postgres(tmp_path / "pg")
    settings = settings_for(servers.nats_url, pg.url, isolation)
    await a_batch(settings)
    pg.stop()
    app = create_app(settings)
    caplog.set_level(logging.INFO, logger="tgdl.gateway")
    lifespan = app.router.lifespan_context(app)
    starting = asyncio.create_task(lifespan.__aenter__())
    try:
        await until(lambda: "PostgreSQL is unreachable" in caplog.text, within=10,
                    what="the gateway saying it waits")
        assert not starting.done()
        pg = start_postgres(tmp_path / "pg")  # back, same data and socket
        await asyncio.wait_for(starting, 20)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://localhost") as client:
            assert (await client.get("/api/media/batch-status/b")).status_code == 200
        assert "PostgreSQL is reachable" in caplog.text
        assert "Traceback" not in caplog.text
    finally:
        if starting.done() and not starting.exception():
            await lifespan.__aexit__(None, None, None)
        else:
            starting.cancel()
        pg.stop()
