"""The HTTP gateway: HTTP in, NATS commands out, status from the read model."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from importlib.resources import files

import uvicorn
from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from tgdl.bus.topology import connect
from tgdl.db.connection import create_pool
from tgdl.db.schema import migrate
from tgdl.gateway import batches, health, messages, single
from tgdl.gateway.commands import Orchestrator
from tgdl.gateway.errors import install_error_handlers
from tgdl.gateway.media import MediaFiles
from tgdl.gateway.services import Services
from tgdl.gateway.settings import GatewaySettings

INDEX_HTML = files("tgdl.gateway").joinpath("static", "index.html")


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nc = await connect(settings.nats_url, "tgdl-gateway")
        try:
            pool = await create_pool(settings.database_url, settings.db_schema, max_size=4)
            try:
                async with pool.acquire() as conn:
                    # The tables exist whichever service starts first.
                    await migrate(conn, settings.db_schema)
                app.state.services = Services(
                    settings, nc, pool, Orchestrator(nc, settings.command_timeout))
                yield
            finally:
                await pool.close()
        finally:
            await nc.drain()

    app = FastAPI(title="tgdl", summary="Batch media downloads from Telegram messages",
                  version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)
    for module in (batches, single, messages, health):
        app.include_router(module.router)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(INDEX_HTML.read_text(encoding="utf-8"))

    app.mount("/media", MediaFiles(directory=settings.media_root, check_dir=False),
              name="media")
    return app


class _Server(uvicorn.Server):
    """On SIGTERM/SIGINT uvicorn stops accepting, finishes, runs the lifespan's exit, and
    then re-raises the signal; a clean stop should exit with status 0 instead."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            try:
                yield
            finally:
                self._captured_signals.clear()


def main() -> None:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = GatewaySettings()
    config = uvicorn.Config(create_app(settings), host=settings.http_host,
                            port=settings.http_port, log_level="info")
    _Server(config).run()
