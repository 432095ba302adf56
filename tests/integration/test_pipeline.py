"""Orchestrator and downloaders in-process on real NATS and PostgreSQL, driven over NATS
exactly as any client program would (request/reply commands, public subjects)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sim_helpers import running_sim
from waiting import until

from tgdl.bus.eventlog import EventLog
from tgdl.bus.leases import Leases
from tgdl.bus.topology import QueuePolicy, ensure_topology
from tgdl.contracts.commands import CancelBatch, CommandReply, RejectReason, StartBatch
from tgdl.contracts.events import BatchFinished, FileCompleted
from tgdl.contracts.jobs import DownloadJob
from tgdl.contracts.paths import relative_path
from tgdl.contracts.subjects import Names
from tgdl.db import catalog as catalog_db
from tgdl.db.connection import connect as db_connect
from tgdl.db.schema import migrate
from tgdl.downloader.app import serve as serve_downloader
from tgdl.downloader.settings import DownloaderSettings
from tgdl.orchestrator.app import OrchestratorService
from tgdl.orchestrator.open_index import OpenBatches
from tgdl.orchestrator.settings import OrchestratorSettings
from tgdl.simtelegram import client as sim_client
from tgdl.simtelegram.content import expected_sha256
from tgdl.simtelegram.settings import SimSettings

SIM = SimSettings(bandwidth=3_000_000, latency=0.0, count=30, min_size=200_000,
                  max_size=1_500_000)


@pytest.fixture
async def pipeline(servers, isolation, nc) -> AsyncIterator[dict]:
    common = dict(nats_url=servers.nats_url, database_url=servers.database_url,
                  namespace=isolation.namespace, db_schema=isolation.schema,
                  media_root=isolation.media_root, ack_wait=3.0)
    async with running_sim(SIM) as sim_url:
        conn = await db_connect(servers.database_url, isolation.schema)
        await migrate(conn, isolation.schema)
        entries = await sim_client.fetch_catalog(sim_url)
        await catalog_db.upsert(conn, entries)
        await conn.close()
        settings = OrchestratorSettings(**common)
        await ensure_topology(nc.jetstream(), settings.names, QueuePolicy.of(settings))
        stop = asyncio.Event()
        orchestrator = OrchestratorService(settings)
        tasks = [asyncio.create_task(orchestrator.run(stop))]
        for i in range(2):
            tasks.append(asyncio.create_task(serve_downloader(
                DownloaderSettings(**common, sim_url=sim_url, replica=f"d{i}"), stop)))
        names = Names(isolation.namespace)

        async def ready():
            with contextlib.suppress(Exception):
                info = await nc.jetstream().consumer_info(names.jobs_stream,
                                                          names.downloader_consumer)
                return info.num_waiting >= 2 and hasattr(orchestrator, "orch")
        await until(ready, what="services ready")
        try:
            yield {"sim_url": sim_url, "names": names, "entries": entries,
                   "media": isolation.media_root, "orchestrator": orchestrator}
        finally:
            stop.set()
            await asyncio.gather(*tasks)


async def command(nc, subject: str, body) -> CommandReply:
    msg = await nc.request(subject, body.model_dump_json().encode(), timeout=10)
    return CommandReply.model_validate_json(msg.data)


async def test_a_batch_over_nats_downloads_every_file_within_its_permits(pipeline, nc):
    names: Names = pipeline["names"]
    healthy = [e for e in pipeline["entries"] if e.media_kind and e.chat == "sim_demo"][:6]
    reply = await command(nc, names.cmd_batch_start, StartBatch(
        message_ids=[e.message_id for e in healthy], max_concurrent=2))
    assert reply.ok is not None, reply.rejected
    batch_id = reply.ok.batch_id
    log = EventLog(nc.jetstream(), names)

    async def finished():
        events, _ = await log.load(batch_id)
        return events if isinstance(events[-1], BatchFinished) else None
    events = await until(finished, 60, what="batch finished")
    index = await OpenBatches.open(nc.jetstream(), names)

    async def unlisted():
        return batch_id not in await index.list()
    await until(unlisted, 10, what="finished batch unlisted")  # a restart will not look at it
    # and the orchestrator's memory holds no finished batch (records do not pile up)
    assert pipeline["orchestrator"].orch.repo.open_batches() == []
    stats = await sim_client.stats(pipeline["sim_url"])
    assert stats["max_serving"] <= 2
    completed = [e for e in events if isinstance(e, FileCompleted)]
    assert len(completed) == 6
    for e in completed:
        data = Path(e.file_path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == expected_sha256(e.message_id, e.size)


async def test_commands_are_validated_and_unknown_batches_refused(pipeline, nc):
    names: Names = pipeline["names"]
    reply = await command(nc, names.cmd_batch_cancel, CancelBatch(batch_id="batch_nothere"))
    assert reply.rejected and reply.rejected.reason is RejectReason.batch_not_found
    for body, says in ((b'{"message_ids": []}', "message_ids"), (b"not json", "")):
        raw = await nc.request(names.cmd_batch_start, body, timeout=10)  # answered, never silence
        rejected = CommandReply.model_validate_json(raw.data).rejected
        assert rejected and rejected.reason is RejectReason.invalid_command
        assert says in rejected.detail
    too_many = StartBatch(message_ids=list(range(1, 52)))
    reply = await command(nc, names.cmd_batch_start, too_many)
    assert reply.rejected.reason is RejectReason.too_many_files


async def test_a_job_joined_by_a_forcing_request_fetches_the_file_again(pipeline, nc):
    names: Names = pipeline["names"]
    [entry] = [e for e in pipeline["entries"] if e.media_kind and e.chat == "sim_demo"][:1]
    m = entry.message_id
    reply = await command(nc, names.cmd_batch_start, StartBatch(message_ids=[m]))
    log = EventLog(nc.jetstream(), names)

    async def finished():
        events, _ = await log.load(reply.ok.batch_id)
        return isinstance(events[-1], BatchFinished)
    await until(finished, 30, what="first download")
    # A job that does not force it, joined by a request that does (as when force=true
    # attaches to a download queued just before the file completed elsewhere).
    js = nc.jetstream()
    leases = await Leases.open(js, names)
    await leases.acquire(m, "plain:1", "someone")
    await leases.acquire(m, "forced:1", "forcing", force=True)
    await js.publish(names.download_jobs,
                     DownloadJob(job_id="plain:1", entry=entry).model_dump_json().encode(),
                     stream=names.jobs_stream)

    async def released():
        return await leases.get(m) is None
    await until(released, 30, what="the shared job to end")
    sent = (await sim_client.stats(pipeline["sim_url"]))["bytes_sent_by_id"][m]
    assert sent == 2 * entry.size  # fetched again, not skipped as already complete


async def test_two_copies_of_one_job_download_the_file_once(pipeline, nc):
    names: Names = pipeline["names"]
    entry = [e for e in pipeline["entries"] if e.media_kind and e.chat == "sim_demo"][1]
    m = entry.message_id
    js = nc.jetstream()
    leases = await Leases.open(js, names)
    await leases.acquire(m, "twice:1", "someone")
    body = DownloadJob(job_id="twice:1", entry=entry).model_dump_json().encode()
    for copy in ("a", "b"):  # e.g. re-queued after the duplicate window had passed
        await js.publish(names.download_jobs, body, stream=names.jobs_stream,
                         headers={"Nats-Msg-Id": f"twice:1:{copy}"})

    async def done():
        info = await js.stream_info(names.jobs_stream)
        return await leases.get(m) is None and info.state.messages == 0
    await until(done, 30, what="both copies handled")
    sent = (await sim_client.stats(pipeline["sim_url"]))["bytes_sent_by_id"][m]
    assert sent == entry.size
    final = pipeline["media"] / relative_path(entry)
    assert hashlib.sha256(final.read_bytes()).hexdigest() == expected_sha256(m, entry.size)
