"""Everything NATS keeps is bounded, and a full stream is an answer, not a crash: the
batch logs and the job queue refuse new messages, progress drops its oldest."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses

import pytest
from waiting import until

from tgdl.bus.topology import QueuePolicy, ensure_topology, stream_configs
from tgdl.contracts.catalog import CatalogEntry, MediaKind
from tgdl.contracts.commands import (
    BatchAccepted,
    CancelBatch,
    CommandReply,
    RejectReason,
    StartBatch,
)
from tgdl.contracts.subjects import Names
from tgdl.db import catalog as catalog_db
from tgdl.db.connection import connect as db_connect
from tgdl.db.schema import migrate_database
from tgdl.orchestrator.app import OrchestratorService
from tgdl.orchestrator.settings import OrchestratorSettings

SMALL = 100  # the smallest count limit the settings accept


async def test_every_stream_and_bucket_is_bounded(nc, isolation):
    names = Names(isolation.namespace)
    js = nc.jetstream()
    policy = QueuePolicy()
    await ensure_topology(js, names, policy)
    configs = {s: (await js.stream_info(s)).config for s in (
        names.events_stream, names.jobs_stream, names.outcomes_stream,
        names.progress_stream, names.advisories_stream)}
    for name, config in configs.items():
        assert config.max_msgs > 0 and config.max_msg_size > 0, name
        # a byte limit would reserve that much disk up front for every stream
        assert (config.max_bytes or -1) < 0, name
    assert configs[names.events_stream].discard == "new"  # the truth is never dropped
    assert configs[names.jobs_stream].discard == "new"
    assert configs[names.progress_stream].discard == "old"
    for bucket in (names.leases_bucket, names.flood_bucket, names.open_batches_bucket,
                   names.idempotency_bucket, names.files_bucket):
        config = (await js.stream_info(f"KV_{bucket}")).config
        assert config.max_msgs == policy.bucket_max_keys and config.max_msg_size > 0, bucket
        # only the record of downloaded files may forget (its oldest): the rest refuse
        assert config.discard == ("old" if bucket == names.files_bucket else "new"), bucket
    # migrating again with other limits changes them in place
    await ensure_topology(js, names, QueuePolicy(bucket_max_keys=SMALL, progress_max_msgs=SMALL))
    assert (await js.stream_info(f"KV_{names.leases_bucket}")).config.max_msgs == SMALL


async def test_batch_logs_never_expire_not_even_where_an_older_release_aged_them(
        nc, isolation):
    """An open batch (paused for months) keeps its log; `tgdl prune` forgets finished
    ones. Releases before this one kept batch logs 30 days, open or not."""
    names = Names(isolation.namespace)
    js = nc.jetstream()
    [events] = [c for c in stream_configs(names, QueuePolicy())
                if c.name == names.events_stream]
    await js.add_stream(dataclasses.replace(events, max_age=30 * 86400.0))
    await ensure_topology(js, names, QueuePolicy())
    assert not (await js.stream_info(names.events_stream)).config.max_age
    # what an orchestrator reads once, and a rebuild after it, still ages
    assert (await js.stream_info(names.outcomes_stream)).config.max_age == 30 * 86400.0


async def test_progress_at_its_limit_drops_the_oldest_and_publishing_goes_on(nc, isolation):
    names = Names(isolation.namespace)
    js = nc.jetstream()
    await ensure_topology(js, names, QueuePolicy(progress_max_msgs=100))
    for m in range(250):  # one file each: the per-subject limit does not apply
        await js.publish(names.file_progress(m), b"{}", stream=names.progress_stream)
    state = (await js.stream_info(names.progress_stream)).state
    assert state.messages == 100 and state.last_seq == 250


@pytest.fixture
async def orchestrator(servers, isolation, nc):
    settings = OrchestratorSettings(
        nats_url=servers.nats_url, database_url=servers.database_url,
        namespace=isolation.namespace, db_schema=isolation.schema,
        media_root=isolation.media_root, events_max_msgs=SMALL)
    await migrate_database(settings.database_url, settings.db_schema)
    await ensure_topology(nc.jetstream(), settings.names, QueuePolicy.of(settings))
    conn = await db_connect(settings.database_url, settings.db_schema)
    await catalog_db.upsert(conn, [CatalogEntry(
        message_id=m, chat="c", telegram_message_id=m, media_kind=MediaKind.photo,
        file_name=f"{m}.jpg", size=10) for m in (1, 2)])
    await conn.close()
    stop = asyncio.Event()
    service = OrchestratorService(settings)
    task = asyncio.create_task(service.run(stop))
    await until(lambda: hasattr(service, "orch") or task.done(), what="orchestrator serving")
    yield settings
    stop.set()
    with contextlib.suppress(Exception):
        await task


async def command(nc, subject: str, body) -> CommandReply:
    msg = await nc.request(subject, body.model_dump_json().encode(), timeout=10)
    return CommandReply.model_validate_json(msg.data)


async def test_a_full_batch_log_refuses_commands_with_a_reason_and_keeps_serving(
        nc, orchestrator):
    names = orchestrator.names
    js = nc.jetstream()
    first = await command(nc, names.cmd_batch_start, StartBatch(message_ids=[1]))
    assert isinstance(first.ok, BatchAccepted)
    # someone else's batches filled the log up to its limit
    filler = names.batch_events("filler")
    with contextlib.suppress(Exception):
        for _ in range(SMALL + 10):
            await js.publish(filler, b"x", stream=names.events_stream)
    refused = await command(nc, names.cmd_batch_start, StartBatch(message_ids=[2]))
    assert refused.rejected and refused.rejected.reason is RejectReason.storage_full
    cancel = await command(nc, names.cmd_batch_cancel, CancelBatch(batch_id=first.ok.batch_id))
    assert cancel.rejected and cancel.rejected.reason is RejectReason.storage_full
    # more room (`tgdl migrate` with a higher limit) and the same orchestrator goes on
    await ensure_topology(js, names, QueuePolicy(events_max_msgs=SMALL * 16))
    again = await command(nc, names.cmd_batch_start, StartBatch(message_ids=[2]))
    assert isinstance(again.ok, BatchAccepted), again
    cancel = await command(nc, names.cmd_batch_cancel, CancelBatch(batch_id=first.ok.batch_id))
    assert cancel.ok is not None, cancel
