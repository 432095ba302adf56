"""Fixtures over real servers. The gateway app, for the gateway's test modules: each gives
its own `settings` fixture (GatewaySettings); these build the app, an HTTP client and a
database connection from it. The simulated Telegram over HTTP, one per module."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from sim_helpers import running_sim

from tgdl.db.connection import connect
from tgdl.downloader.telegram.simulated import SimulatedTelegram
from tgdl.gateway.app import create_app
from tgdl.launcher.prepare import prepare
from tgdl.simtelegram import client as sim_client


@pytest.fixture
async def app(settings):
    await prepare(settings)  # schema and streams, as `tgdl migrate`
    app = create_app(settings)
    async with app.router.lifespan_context(app):  # connects NATS and PostgreSQL
        yield app


@pytest.fixture
async def client(app):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://localhost") as client:
        yield client


@pytest.fixture
async def db(app, settings):
    conn = await connect(settings.database_url, settings.db_schema)
    yield conn
    await conn.close()


@pytest.fixture(scope="module")
async def sim_server() -> AsyncIterator[str]:
    async with running_sim() as base_url:
        yield base_url


@pytest.fixture
async def sim(sim_server: str) -> str:
    """The module's simulated Telegram, with no faults and fresh counters."""
    await sim_client.clear_faults(sim_server)
    await sim_client.until_serving(sim_server, 0)
    await sim_client.reset_stats(sim_server)
    return sim_server


@pytest.fixture
async def tg(sim: str) -> AsyncIterator[SimulatedTelegram]:
    """The downloader's adapter for that simulated Telegram (4 connections)."""
    adapter = SimulatedTelegram(sim)
    await adapter.start()
    yield adapter
    await adapter.close()
