"""Downloader process wiring on FastStream: the job consumer, the progress and outcome
publishers, and the Telegram adapter. Nothing else lives here; the work is in `worker`."""

from __future__ import annotations

import asyncio
import ctypes
import logging
from collections.abc import Callable
from typing import Any

from faststream import BaseMiddleware
from faststream.middlewares import AckPolicy
from faststream.nats import JStream, NatsBroker, PullSub
from pydantic import ValidationError

from tgdl.bus.broker import Message as NatsMessage
from tgdl.bus.broker import nats_broker
from tgdl.bus.jobs import BrokerPublisher, JobLifecycle
from tgdl.bus.leases import Leases
from tgdl.bus.samefile import FileRecords
from tgdl.bus.topology import verify_topology
from tgdl.contracts.jobs import DownloadJob, DownloadOutcome, DownloadProgress
from tgdl.downloader import metrics
from tgdl.downloader.flood import FloodGate
from tgdl.downloader.settings import DownloaderSettings
from tgdl.downloader.telegram.port import TelegramPort
from tgdl.downloader.worker import Worker
from tgdl.runtime import load_settings, run_service, until_reachable

log = logging.getLogger("tgdl.downloader")


def aes(settings: DownloaderSettings) -> str:
    """Telethon's AES backend, for the log; the simulated Telegram needs no Telethon, so
    a downloader using it never imports it (tens of MB)."""
    if settings.telegram != "telethon":
        return "unused"
    from tgdl.telegram.crypto import aes_backend

    return aes_backend()


def build_port(settings: DownloaderSettings) -> TelegramPort:
    if settings.telegram == "telethon":
        from tgdl.downloader.telegram.telethon import TelethonTelegram

        return TelethonTelegram.from_settings(
            connections_per_dc=settings.connections_per_dc,
            requests_per_connection=settings.requests_per_connection)
    from tgdl.downloader.telegram.simulated import SimulatedTelegram

    return SimulatedTelegram(settings.sim_url, connections=settings.connections_per_dc,
                             requests_per_connection=settings.requests_per_connection)


class _NeverTerminate(BaseMiddleware):
    """FastStream's answer to a job whose handler raised must never be to drop it: only
    a body that is not a job at all is terminated; anything else goes back to the queue."""

    async def consume_scope(self, call_next, msg: NatsMessage) -> Any:
        try:
            return await call_next(msg)
        except Exception as exc:
            try:
                DownloadJob.model_validate_json(msg.body)
            except ValidationError:
                log.error("terminating malformed job %r", msg.body[:200])
                await msg.reject()
                return None
            log.error("job handler failed (%r); giving the job back", exc)
            await msg.nack(delay=1.0)
            return None


def _not_started() -> Worker:
    raise RuntimeError("the downloader's worker is not running")


def create_broker(settings: DownloaderSettings,
                  worker: Callable[[], Worker] = _not_started) -> NatsBroker:
    """The downloader's broker: the shared job consumer and what it publishes. Nothing
    connects here, so the AsyncAPI document can be built from it anywhere. `worker`
    returns the running worker (it needs the connection, so it exists only after start)."""
    names = settings.names
    broker = nats_broker(
        settings.nats_url, settings.replica, log_level=logging.DEBUG,
        middlewares=[_NeverTerminate],
        description="tgdl downloader: pulls download jobs, reports progress and outcomes",
    )
    # batch_size=1 and no max_workers: the worker returns from `take` only once a slot
    # is free, so a job is fetched only when it can start at once. FastStream's own
    # max_workers fetches before a worker is free, and a fetched job waiting without
    # heartbeats past ack_wait is redelivered to another replica while this one still
    # holds it (github.com/ag2ai/faststream/issues/2563).
    @broker.subscriber(
        names.download_jobs, stream=JStream(names.jobs_stream, declare=False),
        durable=names.downloader_consumer, pull_sub=PullSub(batch_size=1, timeout=0.2),
        ack_policy=AckPolicy.MANUAL, title="download-jobs",
        description="Work queue shared by every downloader replica (durable consumer "
                    f"`{names.downloader_consumer}`): explicit ack once the outcome is "
                    "published, in-progress heartbeats while downloading, nak to retry.",
    )
    async def on_job(job: DownloadJob, msg: NatsMessage) -> None:
        await worker().take(job, msg)

    broker.publisher(
        names.file_progress("{message_id}"), schema=DownloadProgress, title="file-progress",
        description="A few times per second while a file of more than one 1 MiB part "
                    "downloads (core NATS; the progress stream keeps the latest per file).",
    )
    broker.publisher(
        names.file_done("{message_id}"), schema=DownloadOutcome, title="file-done",
        stream=JStream(names.outcomes_stream, declare=False),
        description="Once per job, deduplicated by `Nats-Msg-Id: <job_id>:done`; "
                    "`parties` are the batches that were waiting for it.",
    )
    return broker


async def serve(settings: DownloaderSettings, stop: asyncio.Event,
                port: TelegramPort | None = None) -> None:
    """Download jobs until `stop` is set; then every running job goes back to the queue
    at once, its .part file kept for whoever resumes it."""
    port = port or build_port(settings)
    names = settings.names
    running: list[Worker] = []
    broker = create_broker(settings, lambda: running[0])
    try:
        # started during an outage, wait for NATS instead of crash-looping
        await until_reachable("NATS", broker.connect, log, stop)
        js = broker.connection.jetstream()
        await verify_topology(js, names)
        flood = FloodGate(await js.key_value(names.flood_bucket), settings.account,
                          settings.replica)
        await flood.start()
        try:
            await port.start()
            lifecycle = JobLifecycle(await Leases.open(js, names), BrokerPublisher(broker),
                                     names)

            async def progress(body: DownloadProgress) -> None:
                await broker.publish(body, names.file_progress(body.message_id))

            worker = Worker(settings, port, lifecycle, flood, progress,
                            await FileRecords.open(js, names))
            running.append(worker)
            metrics.IN_FLIGHT.set_function(lambda: len(worker.running))
            await worker.open()
            await broker.start()
            log.info("%s ready (telegram: %s, %d slots, AES: %s)", settings.replica,
                     settings.telegram, settings.slots, aes(settings))
            try:
                await stop.wait()
            finally:
                # Stop fetching first, so no job is taken while the running ones go back.
                subscribers = [asyncio.create_task(s.stop()) for s in broker.subscribers]
                await asyncio.sleep(0)
                await worker.stop()
                await asyncio.gather(*subscribers, return_exceptions=True)
        finally:
            await flood.stop()
            await port.close()
    finally:
        await broker.stop()


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)


def keep_parts_off_the_heap() -> bool:
    """Part bodies are 1 MiB. glibc serves such blocks with their own mapping, but once
    one is freed it raises its threshold above them, and later parts land on the heap,
    where what they free stays resident between parts. A fixed threshold keeps each
    body its own mapping, given back to the system when freed (in `make bench`, 6 MB
    less at the peak of a large file). False where the C library is not glibc."""
    try:
        return ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 128 * 1024) == 1
    except (OSError, AttributeError):
        return False


def main() -> None:
    settings = load_settings(DownloaderSettings, "downloader")
    keep_parts_off_the_heap()
    run_service("downloader", lambda stop: serve(settings, stop))
