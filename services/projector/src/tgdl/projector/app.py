"""Projector process wiring: a FastStream broker for the connection and the AsyncAPI
document, a check that `tgdl migrate` prepared NATS and PostgreSQL, then projection until
told to stop (SIGTERM/SIGINT), flushing held progress on the way out."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from faststream.nats import JStream, NatsBroker

from tgdl.bus.broker import nats_broker
from tgdl.bus.topology import verify_topology
from tgdl.contracts.api import BatchStatusResponse
from tgdl.contracts.events import BatchEvent
from tgdl.contracts.jobs import DownloadOutcome, DownloadProgress
from tgdl.db.schema import verify_schema
from tgdl.projector.projector import ProjectionLocked, Projector
from tgdl.projector.settings import ProjectorSettings
from tgdl.runtime import load_settings, run_service, until_reachable

log = logging.getLogger("tgdl.projector")


def create_broker(settings: ProjectorSettings) -> NatsBroker:
    """The projector's broker, documenting what it reads and what it publishes. Nothing
    connects here, so the AsyncAPI document can be built from it anywhere.

    The subscribers below describe the channels; the projector never starts them. It
    reads each stream with an ordered consumer from the position stored in PostgreSQL
    (see `Projector.start`), over this broker's connection: that start sequence is known
    only once the projection lock is held, after FastStream fixed its consumers' config,
    and an unreadable body must still reach the writer so that its position advances,
    where a typed FastStream handler would reject it first.
    """
    names = settings.names
    broker = nats_broker(
        settings.nats_url, "tgdl-projector", log_level=logging.DEBUG,
        description="tgdl projector: folds batch events, outcomes and progress into the "
                    "PostgreSQL read model; publishes batch snapshots",
    )

    def reads(subject: str, stream: str, title: str, description: str):
        return broker.subscriber(subject, stream=JStream(stream, declare=False),
                                 title=title, description=description)

    @reads(names.batch_events("{batch_id}"), names.events_stream, "batch-events",
           "Every batch's event log, the source of truth (read from the stored position).")
    async def batch_events(events: list[BatchEvent]) -> None: ...

    @reads(names.file_done("{message_id}"), names.outcomes_stream, "file-done",
           "How each download job ended.")
    async def outcomes(outcome: DownloadOutcome) -> None: ...

    @reads(names.file_progress("{message_id}"), names.progress_stream, "file-progress",
           "Download progress, written to the database about once per second per file.")
    async def progress(report: DownloadProgress) -> None: ...

    broker.publisher(
        names.batch_progress("{batch_id}"), schema=BatchStatusResponse, title="batch-progress",
        description="Core-NATS snapshots of a batch's status (the HTTP batch status body), "
                    "at most one per batch per snapshot interval, and always the last state.",
    )
    return broker


async def run(settings: ProjectorSettings, stop: asyncio.Event) -> None:
    broker = create_broker(settings)
    try:
        # connect only: the documented subscribers never start; started during an
        # outage, wait for the servers instead of crash-looping
        await until_reachable("NATS", broker.connect, log, stop)
        nc = broker.connection
        await verify_topology(nc.jetstream(), settings.names)
        await until_reachable(
            "PostgreSQL", lambda: verify_schema(settings.database_url, settings.db_schema),
            log, stop)
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
        await broker.stop()


def main() -> None:
    settings = load_settings(ProjectorSettings, "projector")
    # A lost database session ends the projector; it starts over once PostgreSQL is back.
    run_service("projector", lambda stop: run(settings, stop), expected=(ProjectionLocked,))
