"""Pause, resume and live max_concurrent on real NATS and PostgreSQL: the orchestrator
and two downloaders in-process, driven over NATS as any client program would, watched
from the simulated Telegram's side (what it serves, how many bytes it sent)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sim_helpers import running_sim
from waiting import until

from tgdl.bus.eventlog import EventLog
from tgdl.bus.leases import Leases, Rejoined
from tgdl.bus.topology import QueuePolicy, ensure_topology
from tgdl.contracts.catalog import CatalogEntry
from tgdl.contracts.commands import (
    BatchAccepted,
    BatchPauseOutcome,
    BatchResumeOutcome,
    CancelBatch,
    CommandReply,
    ConcurrencyOutcome,
    PauseBatch,
    PriorityOutcome,
    ResumeBatch,
    SetConcurrency,
    SetPriority,
    StartBatch,
)
from tgdl.contracts.events import (
    BatchFinished,
    BatchPaused,
    FileCompleted,
    PermitGranted,
    PriorityChanged,
)
from tgdl.contracts.jobs import DownloadOutcome
from tgdl.contracts.paths import relative_path
from tgdl.contracts.status import Priority
from tgdl.contracts.subjects import Names
from tgdl.db import catalog as catalog_db
from tgdl.db.connection import connect as db_connect
from tgdl.db.schema import migrate
from tgdl.downloader.app import serve as serve_downloader
from tgdl.downloader.files import part_path, recorded_parts
from tgdl.downloader.settings import DownloaderSettings
from tgdl.downloader.telegram.port import PART_SIZE
from tgdl.orchestrator.app import OrchestratorService
from tgdl.orchestrator.settings import OrchestratorSettings
from tgdl.simtelegram import client as sim_client
from tgdl.simtelegram.content import expected_sha256
from tgdl.simtelegram.settings import SimSettings

# Files of a few parts at ~1 MB/s per connection: a download lasts seconds, so a pause
# lands in the middle of it, after some parts are on disk and while others are in flight.
SIM = SimSettings(bandwidth=1_000_000, latency=0.0, count=30, min_size=3 * 2**20,
                  max_size=6 * 2**20)


def largest_first(entries: list[CatalogEntry]) -> list[CatalogEntry]:
    """In the order a batch of them is granted."""
    return sorted(entries, key=lambda e: -(e.size or 0))


@contextlib.asynccontextmanager
async def running_stack(servers, isolation, nc, sim: SimSettings = SIM,
                        **overrides) -> AsyncIterator[dict]:
    common = dict(nats_url=servers.nats_url, database_url=servers.database_url,
                  namespace=isolation.namespace, db_schema=isolation.schema,
                  media_root=isolation.media_root, ack_wait=3.0, **overrides)
    async with running_sim(sim) as sim_url:
        conn = await db_connect(servers.database_url, isolation.schema)
        await migrate(conn, isolation.schema)
        entries = await sim_client.fetch_catalog(sim_url)
        await catalog_db.upsert(conn, entries)
        await conn.close()
        settings = OrchestratorSettings(**common)
        await ensure_topology(nc.jetstream(), settings.names, QueuePolicy.of(settings))
        stop = asyncio.Event()
        orchestrator = {"service": OrchestratorService(settings), "stop": asyncio.Event()}
        orchestrator["task"] = asyncio.create_task(
            orchestrator["service"].run(orchestrator["stop"]))
        tasks = []
        for i in range(2):
            tasks.append(asyncio.create_task(serve_downloader(
                # one part in flight per file: a pause always finds some parts on disk
                # and some still to fetch, however fast the machine
                DownloaderSettings(**common, sim_url=sim_url, replica=f"d{i}",
                                   parts_per_file=1), stop)))
        names = Names(isolation.namespace)

        async def ready():
            with contextlib.suppress(Exception):
                info = await nc.jetstream().consumer_info(names.jobs_stream,
                                                          names.downloader_consumer)
                return info.num_waiting >= 2 and hasattr(orchestrator["service"], "orch")
        await until(ready, what="services ready")

        async def restart_orchestrator() -> None:
            """Stop the orchestrator and start a new one on the same streams."""
            orchestrator["stop"].set()
            await orchestrator["task"]
            orchestrator.update(service=OrchestratorService(settings), stop=asyncio.Event())
            orchestrator["task"] = asyncio.create_task(
                orchestrator["service"].run(orchestrator["stop"]))
            await until(lambda: hasattr(orchestrator["service"], "orch"),
                        what="new orchestrator ready")

        healthy = [e for e in entries if e.media_kind and e.chat == "sim_demo"]
        try:
            yield {"sim_url": sim_url, "names": names, "entries": healthy,
                   "media": isolation.media_root, "log": EventLog(nc.jetstream(), names),
                   "leases": await Leases.open(nc.jetstream(), names),
                   "restart_orchestrator": restart_orchestrator}
        finally:
            stop.set()
            orchestrator["stop"].set()
            await asyncio.gather(orchestrator["task"], *tasks)


@pytest.fixture
async def stack(servers, isolation, nc) -> AsyncIterator[dict]:
    async with running_stack(servers, isolation, nc) as running:
        yield running


async def command(nc, subject: str, body, expect):
    msg = await nc.request(subject, body.model_dump_json().encode(), timeout=10)
    reply = CommandReply.model_validate_json(msg.data)
    assert isinstance(reply.ok, expect), reply.rejected
    return reply.ok


def kept_bytes(final: Path, size: int) -> int:
    """Bytes of the parts the sidecar lists as finished (what a resume need not fetch)."""
    return sum(min(PART_SIZE, size - i * PART_SIZE) for i in recorded_parts(final))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def events_of(stack, batch_id: str) -> list:
    return (await stack["log"].load(batch_id))[0]


async def until_finished(stack, batch_id: str) -> list:
    async def finished():
        events = await events_of(stack, batch_id)
        return events if isinstance(events[-1], BatchFinished) else None
    return await until(finished, 60, what=f"{batch_id} finished")


async def test_pause_stops_downloads_keeping_their_parts_and_resume_fetches_only_the_rest(
        stack, nc):
    names: Names = stack["names"]
    files = largest_first(stack["entries"][:3])  # the order their permits go in
    ids = [e.message_id for e in files]
    started = await command(nc, names.cmd_batch_start,
                            StartBatch(message_ids=ids, max_concurrent=2), BatchAccepted)
    b = started.batch_id
    running = {e.message_id: e for e in files[:2]}
    final = {m: stack["media"] / relative_path(e) for m, e in running.items()}

    async def some_parts_on_disk():  # and the rest in flight
        return all(recorded_parts(final[m]) for m in running)
    await until(some_parts_on_disk, 30, what="a part of each running file on disk")

    paused = await command(nc, names.cmd_batch_pause, PauseBatch(batch_id=b),
                           BatchPauseOutcome)
    assert sorted(paused.stopped) == sorted(running)

    async def nothing_served():
        stats = await sim_client.stats(stack["sim_url"])
        return stats if stats["serving"] == 0 else None
    at_pause = await until(nothing_served, 2.0, what="the simulated Telegram idle")

    async def jobs_ended():  # the stopped jobs handed their leases back
        return all([await stack["leases"].get(m) is None for m in running])
    await until(jobs_ended, 10, what="stopped jobs ended")
    sent_at_pause = {m: at_pause["bytes_sent_by_id"].get(m, 0) for m in running}
    kept = {m: kept_bytes(final[m], running[m].size) for m in running}
    for m in running:
        assert part_path(final[m]).exists(), "the pause discarded the partial file"
        assert 0 < kept[m] < running[m].size
        assert not final[m].exists()
        # the stopped job's outcome says what it kept (the status shows it while paused)
        done = await nc.jetstream().get_last_msg(names.outcomes_stream, names.file_done(m))
        assert DownloadOutcome.model_validate_json(done.data).downloaded_size == kept[m]
    events = await events_of(stack, b)
    assert isinstance(events[-1], BatchPaused)  # nothing granted since
    assert files[2].message_id not in at_pause["bytes_sent_by_id"]

    resumed = await command(nc, names.cmd_batch_resume, ResumeBatch(batch_id=b),
                            BatchResumeOutcome)
    assert sorted(resumed.resumed) == sorted(running)
    assert resumed.granted == [m for m in ids if m in running]  # up to max_concurrent
    events = await until_finished(stack, b)
    assert events[-1].overall_status == "completed"

    sent = (await sim_client.stats(stack["sim_url"]))["bytes_sent_by_id"]
    for e in files:
        path = stack["media"] / relative_path(e)
        assert sha256(path) == expected_sha256(e.message_id, e.size)
    for m, e in running.items():
        # after the resume, exactly the parts the sidecar did not list were fetched
        assert sent[m] == sent_at_pause[m] + e.size - kept[m]
    assert sent[files[2].message_id] == files[2].size
    assert not list(stack["media"].rglob("*.part"))


async def test_pausing_one_of_two_batches_sharing_a_file_keeps_it_downloading(stack, nc):
    names: Names = stack["names"]
    shared, own = stack["entries"][3:5]
    first = await command(nc, names.cmd_batch_start, StartBatch(
        message_ids=[shared.message_id, own.message_id], max_concurrent=2), BatchAccepted)
    second = await command(nc, names.cmd_batch_start, StartBatch(
        message_ids=[shared.message_id], max_concurrent=1), BatchAccepted)
    assert second.already_downloading == [shared.message_id]
    await sim_client.until_serving(stack["sim_url"], 2, within=10)

    await command(nc, names.cmd_batch_pause, PauseBatch(batch_id=first.batch_id),
                  BatchPauseOutcome)

    async def only_the_shared_file_served():
        stats = await sim_client.stats(stack["sim_url"])
        return stats["serving_ids"] == [shared.message_id]
    await until(only_the_shared_file_served, 2.0, what="the paused batch's own file stopped")
    events = await until_finished(stack, second.batch_id)
    assert [e.message_id for e in events if isinstance(e, FileCompleted)] == [
        shared.message_id]
    final = stack["media"] / relative_path(shared)
    assert sha256(final) == expected_sha256(shared.message_id, shared.size)
    assert part_path(stack["media"] / relative_path(own)).exists()

    await command(nc, names.cmd_batch_resume, ResumeBatch(batch_id=first.batch_id),
                  BatchResumeOutcome)
    events = await until_finished(stack, first.batch_id)
    assert events[-1].overall_status == "completed"
    sent = (await sim_client.stats(stack["sim_url"]))["bytes_sent_by_id"]
    assert sent[shared.message_id] == shared.size  # found complete on disk: not again


async def test_raising_max_concurrent_starts_more_downloads_at_once(stack, nc):
    names: Names = stack["names"]
    files = stack["entries"][5:9]
    started = await command(nc, names.cmd_batch_start, StartBatch(
        message_ids=[e.message_id for e in files], max_concurrent=1), BatchAccepted)
    b = started.batch_id
    await sim_client.until_serving(stack["sim_url"], 1, within=10)
    raised = await command(nc, names.cmd_batch_concurrency,
                           SetConcurrency(batch_id=b, max_concurrent=3), ConcurrencyOutcome)
    assert (raised.previous, raised.max_concurrent, len(raised.granted)) == (1, 3, 2)
    await sim_client.until_serving(stack["sim_url"], 3, within=10)
    lowered = await command(nc, names.cmd_batch_concurrency,
                            SetConcurrency(batch_id=b, max_concurrent=1), ConcurrencyOutcome)
    assert lowered.granted == []
    events = await until_finished(stack, b)
    assert events[-1].overall_status == "completed"  # nothing interrupted, all done
    grants = [e for e in events if isinstance(e, PermitGranted)]
    assert len(grants) == 4  # every file once
    stats = await sim_client.stats(stack["sim_url"])
    assert stats["max_serving"] <= 3
    assert all(stats["bytes_sent_by_id"][e.message_id] == e.size for e in files)


async def test_a_resume_right_after_a_pause_loses_nothing(stack, nc):
    """The resume may join a job still stopping for the pause: that job goes on rather
    than ending as cancelled, and every file completes exactly once per batch."""
    names: Names = stack["names"]
    files = stack["entries"][9:12]
    started = await command(nc, names.cmd_batch_start, StartBatch(
        message_ids=[e.message_id for e in files], max_concurrent=3), BatchAccepted)
    b = started.batch_id
    await sim_client.until_serving(stack["sim_url"], 3, within=10)
    for _ in range(3):
        await command(nc, names.cmd_batch_pause, PauseBatch(batch_id=b), BatchPauseOutcome)
        await command(nc, names.cmd_batch_resume, ResumeBatch(batch_id=b), BatchResumeOutcome)
    events = await until_finished(stack, b)
    assert events[-1].overall_status == "completed"
    completed = [e.message_id for e in events if isinstance(e, FileCompleted)]
    assert sorted(completed) == sorted(e.message_id for e in files)
    for e in files:
        path = stack["media"] / relative_path(e)
        assert sha256(path) == expected_sha256(e.message_id, e.size)


async def test_cancelling_a_paused_batch_drops_the_parts_it_kept(stack, nc):
    names: Names = stack["names"]
    # the largest files: more parts than connections, so some parts are on disk while
    # others are still in flight
    files = largest_first(stack["entries"])[:2]
    started = await command(nc, names.cmd_batch_start, StartBatch(
        message_ids=[e.message_id for e in files], max_concurrent=2), BatchAccepted)
    b = started.batch_id
    finals = [stack["media"] / relative_path(e) for e in files]

    async def parts_on_disk():
        return all(recorded_parts(f) for f in finals)
    await until(parts_on_disk, 30, what="a part of each file on disk")
    await command(nc, names.cmd_batch_pause, PauseBatch(batch_id=b), BatchPauseOutcome)

    async def stopped():
        return all([await stack["leases"].get(e.message_id) is None for e in files])
    await until(stopped, 10, what="the paused jobs ended")
    assert all(part_path(f).exists() for f in finals)

    msg = await nc.request(names.cmd_batch_cancel,
                           CancelBatch(batch_id=b).model_dump_json().encode(), timeout=10)
    assert CommandReply.model_validate_json(msg.data).ok.stopped == [e.message_id for e in files]

    async def parts_gone():
        return not list(stack["media"].rglob("*.part*"))
    await until(parts_gone, 10, what="the kept .part files dropped")
    assert not any(f.exists() for f in finals)


async def test_a_lease_left_for_a_pause_keeps_the_part_and_a_rejoined_job_cannot_end_cancelled(
        servers, isolation, nc):
    names = Names(isolation.namespace)
    js = nc.jetstream()
    await ensure_topology(js, names, QueuePolicy())
    leases = await Leases.open(js, names)
    await leases.acquire(7, "b:7", "b")
    left = await leases.leave(7, "b", keep_part=True)
    assert (left.parties, left.keep_part) == ([], True)  # its job stops, keeping the .part
    stopping = DownloadOutcome(job_id="b:7", message_id=7, status="cancelled",
                               at=datetime.now(UTC))
    await leases.acquire(7, "b:7:2", "b")  # resumed before the stopping job ended
    with pytest.raises(Rejoined):
        await leases.end(stopping)  # the job must go on for b, not tell it "cancelled"
    await leases.leave(7, "b")
    ended = await leases.end(stopping)
    assert ended is not None and ended.parties == []


# Small files at 1 MB/s: each takes about a second and a half, one at a time under a cap
# of 1, so a batch started while one downloads is queued before the rest of the first.
SMALL = SimSettings(bandwidth=1_000_000, latency=0.0, count=20, min_size=2**20 + 1,
                    max_size=2 * 2**20)


@pytest.fixture
async def capped(servers, isolation, nc) -> AsyncIterator[dict]:
    """The stack with small files and a global cap of 1 download at a time."""
    async with running_stack(servers, isolation, nc, sim=SMALL, global_cap=1) as running:
        yield running


async def completion_order(stack, *batch_ids: str) -> list[int]:
    """The message ids of the batches' completed files, in the order they completed."""
    ended = [e for b in batch_ids for e in await until_finished(stack, b)]
    return [e.message_id for e in sorted(
        (e for e in ended if isinstance(e, FileCompleted)), key=lambda e: e.at)]


async def low_then_high(stack, nc, meanwhile=None) -> list[int]:
    """Under the global cap of 1, a low batch of four files and, once its first file
    downloads, a high batch of two; then `meanwhile()`. Returns the order their files
    completed, checked to be that first low file, then the high batch (before the rest
    of the low one), then the rest of the low batch (it still finishes)."""
    names: Names = stack["names"]
    low_ids = [e.message_id for e in largest_first(stack["entries"][:4])]
    high_ids = [e.message_id for e in largest_first(stack["entries"][4:6])]
    # The first low file's first part trickles (about 5 s), so the high batch waits for
    # the cap before it ends: on a busy machine a 1 s download could end (and the next
    # low file go) before the high batch's start is handled.
    await sim_client.set_faults(stack["sim_url"], slow={"message_id": low_ids[0],
                                                        "bandwidth": 200_000})
    low = await command(nc, names.cmd_batch_start, StartBatch(
        message_ids=low_ids, max_concurrent=2, priority=Priority.low), BatchAccepted)
    await sim_client.until_serving(stack["sim_url"], 1, within=10)  # the first low file
    high = await command(nc, names.cmd_batch_start, StartBatch(
        message_ids=high_ids, max_concurrent=2, priority=Priority.high), BatchAccepted)
    js = nc.jetstream()

    async def all_waiting() -> bool:  # the low batch's second file and the high two
        return (await js.stream_info(names.waiting_stream)).state.messages >= 3
    await until(all_waiting, 10, what="three jobs waiting for the global cap")
    if meanwhile is not None:
        await meanwhile()
    await sim_client.clear_faults(stack["sim_url"])
    order = await completion_order(stack, low.batch_id, high.batch_id)
    assert order[0] in low_ids  # it had started before the high batch came
    assert order[1:3] == high_ids
    assert sorted(order[3:]) == sorted(set(low_ids) - {order[0]})
    return order


async def test_under_the_global_cap_a_later_high_batch_goes_before_the_rest_of_a_low_one(
        capped, nc):
    await low_then_high(capped, nc)
    assert (await sim_client.stats(capped["sim_url"]))["max_serving"] == 1  # the cap held


async def test_jobs_waiting_for_the_global_cap_survive_an_orchestrator_restart_in_order(
        capped, nc):
    # The waiting room is a stream: the jobs granted before a restart wait there, and the
    # new orchestrator admits them best first (high before the rest of the low batch).
    async def restart() -> None:
        waiting = await nc.jetstream().stream_info(capped["names"].waiting_stream)
        assert waiting.state.messages >= 2  # granted, not yet admitted under the cap of 1
        await capped["restart_orchestrator"]()

    await low_then_high(capped, nc, meanwhile=restart)
    assert (await sim_client.stats(capped["sim_url"]))["max_serving"] == 1


async def test_a_waiting_batch_raised_to_high_overtakes_one_queued_before_it(capped, nc):
    names: Names = capped["names"]
    first = [e.message_id for e in capped["entries"][:3]]
    later = [e.message_id for e in capped["entries"][3:5]]
    a = await command(nc, names.cmd_batch_start,
                      StartBatch(message_ids=first, max_concurrent=3), BatchAccepted)
    await sim_client.until_serving(capped["sim_url"], 1, within=10)
    b = await command(nc, names.cmd_batch_start,
                      StartBatch(message_ids=later, max_concurrent=2), BatchAccepted)
    changed = await command(nc, names.cmd_batch_priority, SetPriority(
        batch_id=b.batch_id, priority=Priority.high), PriorityOutcome)
    assert (changed.previous, changed.priority) == (Priority.normal, Priority.high)
    order = await completion_order(capped, a.batch_id, b.batch_id)
    assert order[0] == first[0] and order[1:3] == later and order[3:] == first[1:]
    assert any(isinstance(e, PriorityChanged) for e in await events_of(capped, b.batch_id))
    assert not list(capped["media"].rglob("*.part"))
