"""Run the simulated Telegram inside the test process (real HTTP over loopback)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import uvicorn

from tgdl.contracts.catalog import CatalogEntry
from tgdl.simtelegram.catalog import SimMessage, demo_catalog
from tgdl.simtelegram.server import create_app
from tgdl.simtelegram.settings import SimSettings

# Small, fast defaults for tests: sizes up to a few MiB, no real pacing, no latency.
FAST = SimSettings(bandwidth=0, latency=0.0, count=40, min_size=10_000, max_size=4 * 2**20)
FAST_MESSAGES = demo_catalog(FAST.count, FAST.min_size, FAST.max_size, FAST.seed)


def largest_healthy(rank: int = 0) -> CatalogEntry:
    """The rank-th largest media message of FAST's catalog that is neither deleted nor
    forbidden."""
    healthy = [m for m in FAST_MESSAGES if m.size and not (m.deleted or m.forbidden)]
    return sorted(healthy, key=lambda m: m.size or 0, reverse=True)[rank].to_entry()


@asynccontextmanager
async def running_sim(
    settings: SimSettings = FAST, catalog: Sequence[SimMessage] | None = None
) -> AsyncIterator[str]:
    """Serve the simulated Telegram on a free loopback port; yields its base URL.
    `settings.host`/`port` are ignored: tests always use 127.0.0.1 and a free port."""
    config = uvicorn.Config(
        create_app(settings, catalog),
        host="127.0.0.1",
        port=0,
        log_level="warning",
        log_config=None,  # leave the test process's logging alone
        lifespan="off",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 10
    while not server.started:
        if task.done():
            task.result()  # surfaces the startup error
            raise RuntimeError("the simulated Telegram stopped during startup")
        if time.monotonic() > deadline:
            raise TimeoutError("the simulated Telegram did not start within 10 s")
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
