"""A crash between appending an event and acting on it loses nothing: on restart the
orchestrator replays the logs and finishes the job (dispatch, leave cancelled leases)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from tgdl.bus.eventlog import EventLog
from tgdl.bus.leases import Leases
from tgdl.bus.topology import QueuePolicy, ensure_topology
from tgdl.contracts.catalog import CatalogEntry, MediaKind
from tgdl.contracts.events import BatchCancelled, BatchStarted, JobDispatched, PermitGranted
from tgdl.contracts.jobs import DownloadJob
from tgdl.contracts.subjects import Names
from tgdl.orchestrator.app import OrchestratorService
from tgdl.orchestrator.settings import OrchestratorSettings

NOW = datetime.now(UTC)


def entry(m: int) -> CatalogEntry:
    return CatalogEntry(message_id=m, chat="c", telegram_message_id=m,
                        media_kind=MediaKind.photo, file_name="p.jpg", size=10)


def started(batch_id: str, ids: list[int]) -> BatchStarted:
    return BatchStarted(batch_id=batch_id, at=NOW, kind="batch", max_concurrent=2, force=False,
                        requested_ids=ids, to_download=[entry(m) for m in ids],
                        already_downloaded=[], failed_to_start=[])


async def test_restart_dispatches_grants_and_leaves_leases_of_cancelled_batches(
        servers, isolation, nc):
    names = Names(isolation.namespace)
    js = nc.jetstream()
    await ensure_topology(js, names, QueuePolicy())
    log = EventLog(js, names)
    leases = await Leases.open(js, names)
    # Batch A crashed right after granting permits: no lease, no job, no JobDispatched.
    await log.append("batch_a", [
        started("batch_a", [1, 2, 3]),
        PermitGranted(batch_id="batch_a", at=NOW, message_id=1, job_id="batch_a:1"),
        PermitGranted(batch_id="batch_a", at=NOW, message_id=2, job_id="batch_a:2"),
    ], 0)
    # Batch B was cancelled, but the crash came before it left the lease of file 9.
    await log.append("batch_b", [
        started("batch_b", [9]),
        PermitGranted(batch_id="batch_b", at=NOW, message_id=9, job_id="batch_b:9"),
        JobDispatched(batch_id="batch_b", at=NOW, message_id=9, job_id="batch_b:9",
                      attached=False),
        BatchCancelled(batch_id="batch_b", at=NOW, stopped=[9]),
    ], 0)
    await leases.acquire(9, "batch_b:9", "batch_b")

    stop = asyncio.Event()
    service = OrchestratorService(OrchestratorSettings(
        nats_url=servers.nats_url, database_url=servers.database_url,
        namespace=isolation.namespace, db_schema=isolation.schema))
    task = asyncio.create_task(service.run(stop))
    try:
        async def dispatched() -> list:
            events, _ = await log.load("batch_a")
            return [e for e in events if isinstance(e, JobDispatched)]
        deadline = asyncio.get_running_loop().time() + 20
        while len(await dispatched()) < 2:
            assert asyncio.get_running_loop().time() < deadline, "grants never dispatched"
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task

    assert sorted(e.message_id for e in await dispatched()) == [1, 2]
    info = await js.stream_info(names.jobs_stream)
    assert info.state.messages == 2  # one job per grant, not more
    jobs = [DownloadJob.model_validate_json((await js.get_msg(names.jobs_stream, seq)).data)
            for seq in range(info.state.first_seq, info.state.last_seq + 1)]
    assert sorted(j.job_id for j in jobs) == ["batch_a:1", "batch_a:2"]
    for m in (1, 2):
        lease, _ = await leases.get(m)
        assert lease.parties == ["batch_a"]
    lease, _ = await leases.get(9)
    assert lease.parties == []  # the downloader of file 9 now sees nobody wants it
