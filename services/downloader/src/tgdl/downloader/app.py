"""Downloader process wiring: pick the Telegram adapter, connect, run the worker."""

from __future__ import annotations

import asyncio
import logging
import signal

from tgdl.bus.leases import Leases
from tgdl.bus.topology import QueuePolicy, connect, ensure_topology
from tgdl.downloader.flood import FloodGate
from tgdl.downloader.settings import DownloaderSettings
from tgdl.downloader.telegram.port import TelegramPort
from tgdl.downloader.worker import Worker

log = logging.getLogger("tgdl.downloader")


def build_port(settings: DownloaderSettings) -> TelegramPort:
    if settings.telegram == "telethon":
        from tgdl.downloader.telegram.telethon import TelethonTelegram

        return TelethonTelegram.from_settings()
    from tgdl.downloader.telegram.simulated import SimulatedTelegram

    return SimulatedTelegram(settings.sim_url)


async def serve(settings: DownloaderSettings, stop: asyncio.Event,
                port: TelegramPort | None = None) -> None:
    port = port or build_port(settings)
    nc = await connect(settings.nats_url, settings.replica)
    js = nc.jetstream()
    names = settings.names
    await ensure_topology(js, names, QueuePolicy.of(settings))
    flood = FloodGate(await js.key_value(names.flood_bucket), settings.account, settings.replica)
    await flood.start()
    await port.start()
    worker = Worker(settings, port, nc, js, await Leases.open(js, names), flood)
    log.info("%s ready (telegram: %s, %d slots)", settings.replica, settings.telegram,
             settings.slots)
    try:
        await worker.run(stop)
    finally:
        await flood.stop()
        await port.close()
        await nc.drain()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = DownloaderSettings()

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop)

    asyncio.run(run())
