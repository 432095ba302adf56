"""Rebuilding the read model from the streams, and waiting for the projection to catch up.

`rebuild` empties the read model and replays every stream from its first retained
message; the fold rules make the result identical to what live projection produced.
`catch_up` waits until the stored positions cover everything published so far (tests and
tools use it instead of sleeping)."""

from __future__ import annotations

import asyncpg
from nats.js import JetStreamContext

from tgdl.bus.broker import connect
from tgdl.bus.topology import verify_topology
from tgdl.contracts.config import CommonSettings
from tgdl.contracts.subjects import Names
from tgdl.db.connection import connect as db_connect
from tgdl.db.positions import until_reached
from tgdl.db.schema import verify_schema
from tgdl.projector.projector import Projector
from tgdl.projector.settings import ProjectorSettings


def projected_streams(names: Names) -> tuple[str, str, str]:
    return names.events_stream, names.outcomes_stream, names.progress_stream


async def stream_targets(js: JetStreamContext, names: Names) -> dict[str, int]:
    """Per stream, the position that covers everything published so far (0 when nothing
    is retained: an empty or fully aged-out stream asks for nothing)."""
    targets = {}
    for stream in projected_streams(names):
        state = (await js.stream_info(stream)).state
        targets[stream] = state.last_seq if state.messages else 0
    return targets


async def catch_up(js: JetStreamContext, db: asyncpg.Connection | asyncpg.Pool, names: Names,
                   within: float = 10.0) -> dict[str, int]:
    """Wait until the stored positions cover every message published before the call;
    returns the positions. TimeoutError if that takes longer than `within` seconds."""
    targets = await stream_targets(js, names)
    reached, stored = await until_reached(db, targets, within, poll=0.02)
    positions = {s: seq for s, seq in stored.items() if s in targets}
    if not reached:
        raise TimeoutError(f"projection at {positions}, expected {targets}")
    return positions


async def rebuild(settings: CommonSettings, idle_timeout: float = 30.0) -> dict[str, int]:
    """Drop the read model and replay every stream until it has caught up with each
    stream's last message at the start. Refuses to run while a projector is running.
    Returns the messages replayed per stream ("events", "outcomes", "progress") and the
    rows now in each table ("batches", "batch_files", "jobs")."""
    s = ProjectorSettings(**{**settings.model_dump(), "progress_interval": 0.0})
    names = s.names
    nc = await connect(s.nats_url, "tgdl-rebuild")
    try:
        js = nc.jetstream()
        await verify_topology(js, names)  # `tgdl migrate` declares; nothing else does
        await verify_schema(s.database_url, s.db_schema)
        projector = Projector(s, nc, publish_snapshots=False)
        await projector.start(wait_for_lock=False, truncate=True)
        try:
            await projector.wait_until(await stream_targets(js, names), idle_timeout)
        finally:
            await projector.stop()
        conn = await db_connect(s.database_url, s.db_schema)
        try:
            rows = {t: await conn.fetchval(f"SELECT count(*) FROM {t}")
                    for t in ("batches", "batch_files", "jobs")}
        finally:
            await conn.close()
    finally:
        await nc.drain()
    replayed = {kind: projector.stats.applied.get(stream, 0)
                for kind, stream in zip(("events", "outcomes", "progress"),
                                        projected_streams(names), strict=True)}
    return {**replayed, **rows}
