"""tgdl prune forgets batches finished longer ago than the retention age, in the event log
and (through the projector) the read model alike; open and recent batches stay, and so do
the files."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import nats

from tgdl.contracts.catalog import CatalogEntry, MediaKind
from tgdl.contracts.config import CommonSettings
from tgdl.contracts.events import BatchFinished, BatchPruned, BatchStarted, parse_events
from tgdl.db.connection import connect
from tgdl.launcher.prepare import prepare
from tgdl.launcher.prune import prune
from tgdl.projector.fold import fold_event
from tgdl.projector.sql import apply_changes


async def test_prune_forgets_only_batches_finished_before_the_age(servers, isolation):
    settings = CommonSettings(nats_url=servers.nats_url, database_url=servers.database_url,
                              namespace=isolation.namespace, db_schema=isolation.schema)
    await prepare(settings)
    names = settings.names
    now = datetime.now(UTC)
    entry = CatalogEntry(message_id=1, chat="c", telegram_message_id=1,
                         media_kind=MediaKind.photo, file_name="p.jpg", size=10)
    conn = await connect(settings.database_url, settings.db_schema)
    nc = await nats.connect(servers.nats_url)
    js = nc.jetstream()
    try:
        for batch_id, started, finished in (("old", now - timedelta(days=40), True),
                                            ("recent", now - timedelta(days=2), True),
                                            ("open", now - timedelta(days=90), False)):
            events = [BatchStarted(batch_id=batch_id, at=started, kind="batch",
                                   max_concurrent=1, force=False, requested_ids=[1],
                                   to_download=[entry], already_downloaded=[],
                                   failed_to_start=[])]
            if finished:
                events.append(BatchFinished(batch_id=batch_id, at=started, completed=0,
                                            failed=1, overall_status="failed"))
            for event in events:
                await apply_changes(conn, fold_event(event))
                await js.publish(names.batch_events(batch_id), event.model_dump_json().encode(),
                                 stream=names.events_stream)

        assert await prune(settings, timedelta(days=30)) == ["old"]

        # the old batch's log is only a marker now, and the projector (the read model's one
        # writer) folds it: here, as the projector does
        info = await js.stream_info(names.events_stream, subjects_filter=names.all_batch_events)
        assert info.state.subjects == {names.batch_events("recent"): 2,
                                       names.batch_events("open"): 1,
                                       names.batch_events("old"): 1}
        [marker] = parse_events((await js.get_last_msg(names.events_stream,
                                                       names.batch_events("old"))).data)
        assert isinstance(marker, BatchPruned)
        await apply_changes(conn, fold_event(marker))

        left = {r["batch_id"] for r in await conn.fetch("SELECT batch_id FROM batches")}
        assert left == {"recent", "open"}
        assert not await conn.fetchval("SELECT count(*) FROM batch_files WHERE batch_id='old'")
        assert await prune(settings, timedelta(days=30)) == []  # nothing more to do
        # folded again (a rebuild replays the marker alone), it changes nothing
        await apply_changes(conn, fold_event(marker))
        assert {r["batch_id"] for r in await conn.fetch("SELECT batch_id FROM batches")} == left
    finally:
        await nc.drain()
        await conn.close()
