"""`tgdl prune`: forget batches that finished longer ago than the retention age.

Each batch's events are purged from the EVENTS stream and a `BatchPruned` marker takes
their place; the projector, the read model's only writer, then removes the batch's rows,
and a rebuild from the streams gives the same (pruned) read model. Finished files stay on
disk: they are the user's. A batch that is still open is never touched.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tgdl.bus.broker import connect as nats_connect
from tgdl.bus.eventlog import EventLog
from tgdl.contracts.config import CommonSettings
from tgdl.contracts.events import BatchPruned
from tgdl.db.connection import connect


async def prune(settings: CommonSettings, older_than: timedelta) -> list[str]:
    """Prune; returns the batch ids pruned."""
    conn = await connect(settings.database_url, settings.db_schema)
    nc = await nats_connect(settings.nats_url, "tgdl-prune")
    try:
        js = nc.jetstream()
        rows = await conn.fetch(
            "SELECT batch_id FROM batches WHERE finished_at IS NOT NULL "
            "AND finished_at < now() - $1::interval ORDER BY finished_at", older_than)
        pruned = []
        for row in rows:
            batch_id = row["batch_id"]
            await js.purge_stream(settings.names.events_stream,
                                  subject=settings.names.batch_events(batch_id))
            # an emptied subject: the marker expects nothing before it
            await EventLog(js, settings.names).append(
                batch_id, [BatchPruned(batch_id=batch_id, at=datetime.now(UTC))], 0)
            pruned.append(batch_id)
        return pruned
    finally:
        await nc.drain()
        await conn.close()
