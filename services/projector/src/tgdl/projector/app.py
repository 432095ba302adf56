"""Projector process wiring: connect, declare the topology, migrate, project until told
to stop (SIGTERM/SIGINT), flushing held progress on the way out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from tgdl.bus.topology import QueuePolicy, connect, ensure_topology
from tgdl.db.schema import migrate_database
from tgdl.projector.projector import Projector
from tgdl.projector.settings import ProjectorSettings

log = logging.getLogger("tgdl.projector")


async def run(settings: ProjectorSettings, stop: asyncio.Event) -> None:
    nc = await connect(settings.nats_url, "tgdl-projector")
    try:
        await ensure_topology(nc.jetstream(), settings.names, QueuePolicy.of(settings))
        await migrate_database(settings.database_url, settings.db_schema)
        projector = Projector(settings, nc)
        try:
            starting = asyncio.create_task(projector.start())
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not starting.done():  # told to stop while standing by for the lock
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await starting
                return
            starting.result()
            await projector.serve(stop)
        finally:
            await projector.stop()
    finally:
        await nc.drain()


def main() -> None:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = ProjectorSettings()

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run(settings, stop)
        log.info("projector stopped")

    asyncio.run(_main())
