"""A crash between appending an event and acting on it loses nothing: on restart the
orchestrator replays the logs and finishes the job (dispatch, leave cancelled leases)."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

from nats.errors import NoRespondersError
from waiting import until

from tgdl.bus.eventlog import EventLog
from tgdl.bus.jobs import JetStreamPublisher, JobLifecycle
from tgdl.bus.leases import Leases
from tgdl.bus.topology import QueuePolicy, ensure_topology
from tgdl.contracts.catalog import CatalogEntry, MediaKind
from tgdl.contracts.commands import CommandReply, StartBatch
from tgdl.contracts.errors import ErrorCode
from tgdl.contracts.events import (
    BatchCancelled,
    BatchFinished,
    BatchStarted,
    FileFailed,
    JobDispatched,
    PermitGranted,
)
from tgdl.contracts.jobs import DownloadJob, DownloadOutcome
from tgdl.contracts.status import OutcomeStatus
from tgdl.contracts.subjects import Names
from tgdl.db import catalog as catalog_db
from tgdl.db.connection import connect as db_connect
from tgdl.db.schema import migrate_database
from tgdl.orchestrator.app import OrchestratorService
from tgdl.orchestrator.open_index import OpenBatches
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
    await ensure_topology(js, names, QueuePolicy())  # what `tgdl migrate` declares
    await migrate_database(servers.database_url, isolation.schema)
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
    # Both were listed as open before their first append; a finished batch C was not
    # unlisted before the crash either, and batch D never got its start appended.
    index = await OpenBatches.open(js, names)
    for batch_id in ("batch_a", "batch_b", "batch_c", "batch_d"):
        await index.add(batch_id)
    await log.append("batch_c", [started("batch_c", [])], 0)  # nothing to do: finishes
    await log.append("batch_c", [BatchFinished(batch_id="batch_c", at=NOW,
                                               overall_status="completed", completed=0,
                                               failed=0)], (await log.load("batch_c"))[1])

    stop = asyncio.Event()
    service = OrchestratorService(OrchestratorSettings(
        nats_url=servers.nats_url, database_url=servers.database_url,
        namespace=isolation.namespace, db_schema=isolation.schema))
    task = asyncio.create_task(service.run(stop))
    try:
        async def dispatched() -> list:
            events, _ = await log.load("batch_a")
            return [e for e in events if isinstance(e, JobDispatched)]

        async def both_dispatched() -> bool:
            return len(await dispatched()) == 2
        await until(both_dispatched, 20, what="the grants dispatched")
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
    # only the batch with work left stays listed; D is young, so it may still be starting
    assert await index.list() == ["batch_a", "batch_d"]


async def test_a_job_whose_downloaders_keep_dying_fails_with_a_reason(servers, isolation, nc):
    """JetStream gives up after max_deliver; its advisory is stored, so the file fails with
    a reason even though no orchestrator was running when it happened."""
    names = Names(isolation.namespace)
    settings = OrchestratorSettings(
        nats_url=servers.nats_url, database_url=servers.database_url,
        namespace=isolation.namespace, db_schema=isolation.schema, ack_wait=1.0, max_deliver=1)
    await ensure_topology(nc.jetstream(), names, QueuePolicy.of(settings))
    await migrate_database(servers.database_url, isolation.schema)
    conn = await db_connect(servers.database_url, isolation.schema)
    await catalog_db.upsert(conn, [entry(5)])
    await conn.close()
    js = nc.jetstream()

    stop = asyncio.Event()
    task = asyncio.create_task(OrchestratorService(settings).run(stop))
    try:
        reply = None
        while reply is None:  # until the orchestrator answers
            with contextlib.suppress(NoRespondersError, TimeoutError):
                raw = await nc.request(names.cmd_batch_start,
                                       StartBatch(message_ids=[5]).model_dump_json().encode(),
                                       timeout=2)
                reply = CommandReply.model_validate_json(raw.data)
    finally:
        stop.set()
        await task
    batch_id = reply.ok.batch_id

    # A downloader takes the job and dies without a word.
    sub = await js.pull_subscribe_bind(names.downloader_consumer, stream=names.jobs_stream)
    [job] = await sub.fetch(1, timeout=5)
    assert DownloadJob.model_validate_json(job.data).entry.message_id == 5
    await sub.unsubscribe()

    async def advisory_stored() -> bool:
        return (await js.stream_info(names.advisories_stream)).state.messages == 1
    await until(advisory_stored, 20, what="the max-deliveries advisory stored")

    stop = asyncio.Event()
    task = asyncio.create_task(OrchestratorService(settings).run(stop))
    log = EventLog(js, names)
    try:
        async def finished() -> list:
            events, _ = await log.load(batch_id)
            return events if isinstance(events[-1], BatchFinished) else []
        events = await until(finished, 20, what="the batch finished")
    finally:
        stop.set()
        await task
    [failed] = [e for e in events if isinstance(e, FileFailed)]
    assert failed.failure.error is ErrorCode.worker_lost and failed.failure.suggestion
    assert events[-1].overall_status == "failed"
    assert await (await Leases.open(js, names)).get(5) is None  # the message is free again
    assert (await js.stream_info(names.jobs_stream)).state.messages == 0


async def test_a_dispatch_retried_after_its_job_ended_queues_it_again(servers, isolation, nc):
    """Nats-Msg-Id drops a re-published job; if that job already ran to its end, the lease
    the retry took must still get a job, or the message would stay leased forever."""
    names = Names(isolation.namespace)
    js = nc.jetstream()
    await ensure_topology(js, names, QueuePolicy())
    jobs = JobLifecycle(await Leases.open(js, names), JetStreamPublisher(js), names)
    job = DownloadJob(job_id="batch_x:4", entry=entry(4))
    sub = await js.pull_subscribe_bind(names.downloader_consumer, stream=names.jobs_stream)

    await jobs.publish_job(job)  # how the orchestrator's dispatch queues a job
    [first] = await sub.fetch(1, timeout=5)
    await first.ack()  # the job ran and ended; its lease was released
    await jobs.publish_job(job)  # a retried dispatch publishes the same Nats-Msg-Id
    [again] = await sub.fetch(1, timeout=5)
    assert DownloadJob.model_validate_json(again.data).job_id == "batch_x:4"
    await again.ack()

    await jobs.publish_job(job)  # while a copy is still queued, no second copy is added
    await jobs.publish_job(job)
    assert len(await sub.fetch(5, timeout=2)) == 1


async def test_an_outcome_that_fails_to_apply_is_retried_and_an_unreadable_one_dropped(
        servers, isolation, nc):
    """The outcomes durable is bound with manual acks: a handler that raised naks (the
    outcome comes back), only a body no release can read is terminated."""
    names = Names(isolation.namespace)
    js = nc.jetstream()
    await ensure_topology(js, names, QueuePolicy())
    await migrate_database(servers.database_url, isolation.schema)
    service = OrchestratorService(OrchestratorSettings(
        nats_url=servers.nats_url, database_url=servers.database_url,
        namespace=isolation.namespace, db_schema=isolation.schema))
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        await until(lambda: hasattr(service, "orch"), 20, what="the orchestrator serving")
        applied: list[str] = []
        real = service.orch.on_outcome

        async def flaky(outcome) -> None:
            applied.append(outcome.job_id)
            if len(applied) == 1:
                raise ConnectionError("a NATS hiccup")
            await real(outcome)
        service.orch.on_outcome = flaky

        await js.publish(names.file_done(1), b'{"job_id": 1}', stream=names.outcomes_stream)
        outcome = DownloadOutcome(job_id="nobody:2", message_id=2,
                                  status=OutcomeStatus.completed, at=NOW)
        await js.publish(names.file_done(2), outcome.model_dump_json().encode(),
                         stream=names.outcomes_stream)
        await until(lambda: len(applied) >= 2, 20, what="the failed outcome applied again")

        async def all_settled() -> bool:
            info = await js.consumer_info(names.outcomes_stream,
                                          names.orchestrator_outcomes_consumer)
            return info.num_ack_pending == 0 and info.num_pending == 0
        await until(all_settled, 20, what="both outcomes acknowledged or terminated")
        assert applied == ["nobody:2", "nobody:2"]  # the unreadable one never reached it
    finally:
        stop.set()
        await task
