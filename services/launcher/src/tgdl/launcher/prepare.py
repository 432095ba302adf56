"""Getting the servers ready for the services: the schema, the NATS topology, the catalog.

This is the one place that declares them (`tgdl migrate`, and `tgdl run` before it starts
any service); the services only verify that they exist."""

from __future__ import annotations

from tgdl.bus import topology
from tgdl.bus.broker import connect as nats_connect
from tgdl.contracts.catalog import CatalogEntry
from tgdl.contracts.config import CommonSettings
from tgdl.db import catalog, schema
from tgdl.db.connection import connect


async def ensure_nats(settings: CommonSettings) -> None:
    """Declare the streams, consumers and buckets (idempotent)."""
    nc = await nats_connect(settings.nats_url, "tgdl-launcher")
    try:
        await topology.ensure_topology(nc.jetstream(), settings.names,
                                        topology.QueuePolicy.of(settings))
    finally:
        await nc.drain()


async def prepare(settings: CommonSettings) -> int:
    """Schema and topology, both idempotent; returns the schema's version."""
    version = await schema.migrate_database(settings.database_url, settings.db_schema)
    await ensure_nats(settings)
    return version


async def seed_from_simulator(sim_url: str, settings: CommonSettings) -> list[CatalogEntry]:
    """Copy the simulated Telegram's messages into the catalog (idempotent), as the
    catalog service does, before any service starts: the first page already lists them."""
    from tgdl.catalog.simulated import seed

    conn = await connect(settings.database_url, settings.db_schema)
    try:
        return await seed(conn, sim_url)
    finally:
        await conn.close()


async def media_examples(settings: CommonSettings, count: int = 5) -> list[CatalogEntry]:
    """The first few downloadable messages of the catalog (for the examples we print)."""
    conn = await connect(settings.database_url, settings.db_schema)
    try:
        entries, _total = await catalog.page(conn, 0, count, media_only=True)
    finally:
        await conn.close()
    return entries
