"""The HTTP gateway: HTTP in, NATS commands out, status from the read model."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from importlib.resources import files

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response
from starlette.exceptions import HTTPException

from tgdl.contracts.api import ErrorBody
from tgdl.db.connection import create_pool
from tgdl.db.positions import load_positions
from tgdl.db.schema import verify_schema
from tgdl.gateway import batches, health, messages, metrics, rules, single, steering
from tgdl.gateway.commands import create_broker
from tgdl.gateway.errors import install_error_handlers
from tgdl.gateway.freshness import Freshness
from tgdl.gateway.idempotency import Idempotency
from tgdl.gateway.media import MediaFiles
from tgdl.gateway.security import GuardMiddleware, Limits, Tokens, allowed_hosts
from tgdl.gateway.services import Database, Services
from tgdl.gateway.settings import GatewaySettings
from tgdl.runtime import (
    ServiceStopped,
    http_stopping,
    load_settings,
    serve_http,
    setup_logging,
    until_reachable,
)

log = logging.getLogger("tgdl.gateway")
STATIC = files("tgdl.gateway").joinpath("static")
# The page runs only its own script and style (no inline code): a file name or caption
# that slipped into the markup could not run.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "media-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; "
        "frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
ASSETS = {"app.js": "text/javascript", "app.css": "text/css"}
# Every failure is an ErrorBody (see errors.py); the document says so for every route.
ERROR_RESPONSES: dict[int | str, dict] = {
    status: {"model": ErrorBody, "description": description} for status, description in (
        (400, "a body that is not UTF-8 JSON"),
        (401, "no valid API token (when tokens are on)"),
        (403, "a cross-site browser request, or a chat this caller may not read"),
        (404, "no such batch, message or file"),
        (409, "an Idempotency-Key whose first request is still being answered"),
        (413, "the request body is too large"),
        (421, "a Host this server does not answer for"),
        (422, "an invalid request (the detail names the field), or an Idempotency-Key "
              "reused with another body"),
        (429, "too many open event streams from this client"),
        (503, "NATS or PostgreSQL unreachable, or the orchestrator did not answer"),
        (507, "NATS storage full: no room for a new batch"),
    )
}


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    tokens = Tokens(settings.api_token, settings.media_link_ttl, settings.api_tokens)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Started during an outage (or before the servers), wait for them, saying so once;
        # told to stop meanwhile, start nothing and let the server exit.
        broker, orchestrator = create_broker(settings)
        catalog = rules.declare(broker, settings)
        try:
            await until_reachable(
                "PostgreSQL", lambda: verify_schema(settings.database_url, settings.db_schema),
                log, stop=http_stopping())
            await until_reachable("NATS", broker.start, log, stop=http_stopping())
        except ServiceStopped:
            yield
            return
        try:
            db = Database(await create_pool(settings.database_url, settings.db_schema,
                                            max_size=4, command_timeout=settings.db_timeout),
                          settings.db_timeout)
            names = settings.names
            freshness = Freshness(
                broker.connection,
                [names.events_stream, names.outcomes_stream, names.progress_stream],
                lambda: load_positions(db), settings.stale_after)
            watching = asyncio.create_task(freshness.run())
            try:
                idempotency = Idempotency(
                    broker.connection.jetstream(), names.idempotency_bucket,
                    wait=settings.command_timeout + settings.projection_wait)
                app.state.services = Services(settings, broker.connection, db, orchestrator,
                                              freshness, idempotency, tokens, catalog)
                yield
            finally:
                watching.cancel()
                await db.close()
        finally:
            await broker.stop()

    app = FastAPI(title="tgdl", summary="Batch media downloads from Telegram messages",
                  version="0.1.0", lifespan=lifespan, responses=ERROR_RESPONSES)
    install_error_handlers(app)
    metrics.install(app)  # GET /metrics and HTTP latency by route
    for module in (batches, steering, single, messages, rules, health):
        app.include_router(module.router)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(STATIC.joinpath("index.html").read_text(encoding="utf-8"),
                            headers=PAGE_HEADERS)

    @app.get("/static/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in ASSETS:
            raise HTTPException(404, "no such file")
        return Response(STATIC.joinpath(name).read_bytes(), media_type=ASSETS[name],
                        headers={"X-Content-Type-Options": "nosniff"})

    app.mount("/media", MediaFiles(directory=settings.media_root, check_dir=False),
              name="media")
    # Outermost, so that nothing (not even the /media mount) is reached unchecked.
    app.add_middleware(
        GuardMiddleware, tokens=tokens,
        hosts=allowed_hosts(settings.allowed_hosts.split(","), settings.http_host),
        limits=Limits(settings.max_body_bytes, settings.max_event_streams))
    return app


def main() -> None:
    setup_logging()
    settings = load_settings(GatewaySettings, "gateway")
    serve_http(create_app(settings), settings.http_host, settings.http_port)
