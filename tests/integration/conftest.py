"""The gateway app over real servers, for the gateway's test modules: each gives its own
`settings` fixture (GatewaySettings); these build the app, an HTTP client and a database
connection from it."""

from __future__ import annotations

import httpx
import pytest

from tgdl.db.connection import connect
from tgdl.gateway.app import create_app
from tgdl.launcher.prepare import prepare


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
