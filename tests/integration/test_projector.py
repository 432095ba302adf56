"""The projector on real NATS and PostgreSQL: real events appended to the batch log, real
outcome and progress messages, the projector running in-process."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from tgdl.bus.eventlog import EventLog
from tgdl.bus.topology import QueuePolicy, TopologyMissing, ensure_topology
from tgdl.contracts.catalog import CatalogEntry, MediaKind
from tgdl.contracts.errors import ErrorCode, FileFailure
from tgdl.contracts.events import (
    AlreadyDownloaded,
    BatchCancelled,
    BatchFinished,
    BatchPaused,
    BatchResumed,
    BatchStarted,
    ConcurrencyChanged,
    FileCompleted,
    JobDispatched,
    PermitGranted,
    PriorityChanged,
)
from tgdl.contracts.jobs import DownloadOutcome, DownloadProgress
from tgdl.db.connection import connect
from tgdl.db.positions import PositionsMoved, load_positions, save_positions
from tgdl.db.readmodel import batch_status, message_status, snapshot_json
from tgdl.db.schema import MIGRATIONS, migrate
from tgdl.projector.app import run as run_projector
from tgdl.projector.projector import Delivery, ProjectionLocked, Projector
from tgdl.projector.rebuild import catch_up, rebuild, stream_targets
from tgdl.projector.settings import ProjectorSettings

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def entry(m: int, size: int = 1000) -> CatalogEntry:
    return CatalogEntry(message_id=m, chat="chan", telegram_message_id=500 + m,
                        media_kind=MediaKind.video, file_name=f"clip{m}.mp4", size=size)


@pytest.fixture
def settings(servers, isolation) -> ProjectorSettings:
    return ProjectorSettings(
        nats_url=servers.nats_url, database_url=servers.database_url,
        namespace=isolation.namespace, db_schema=isolation.schema,
        media_root=isolation.media_root, progress_interval=0.05, snapshot_interval=0.05,
    )


@pytest.fixture
async def js(nc, settings):
    js = nc.jetstream()
    await ensure_topology(js, settings.names, QueuePolicy())
    return js


@pytest.fixture
async def db(settings):
    conn = await connect(settings.database_url, settings.db_schema)
    await migrate(conn, settings.db_schema)
    yield conn
    await conn.close()


@pytest.fixture
async def projector(settings, nc, js, db):
    p = Projector(settings, nc)
    await p.start()
    yield p
    await p.stop()


class Feed:
    """Publishes what the orchestrator and the downloaders would."""

    def __init__(self, js, settings: ProjectorSettings) -> None:
        self.js = js
        self.names = settings.names
        self.log = EventLog(js, self.names)
        self.last: dict[str, int] = {}

    async def events(self, batch_id: str, *events) -> None:
        self.last[batch_id] = await self.log.append(batch_id, events,
                                                    self.last.get(batch_id, 0))

    async def progress(self, job: str, m: int, done: int, t: float, state: str = "downloading",
                       **extra) -> None:
        report = DownloadProgress(job_id=job, message_id=m, state=state, downloaded_size=done,
                                  total_size=1000, download_speed=100, at=at(t), **extra)
        await self.js.publish(self.names.file_progress(m), report.model_dump_json().encode())

    async def completed(self, job: str, m: int, t: float, parties: list[str]) -> None:
        done = DownloadOutcome(job_id=job, message_id=m, status="completed", parties=parties,
                               file_path=f"/srv/media/videos/{m}.mp4",
                               relative_path=f"videos/{m}.mp4", size=1000, at=at(t))
        await self.js.publish(self.names.file_done(m), done.model_dump_json().encode())


@pytest.fixture
def feed(js, settings) -> Feed:
    return Feed(js, settings)


async def start_two_batches(feed: Feed) -> None:
    """b1 downloads 1 and 2 (2 in a flood wait), 3 pending, 4 already there, 5 refused;
    the single request s1 attaches to b1's download of 1."""
    await feed.events("b1", BatchStarted(
        batch_id="b1", at=at(0), kind="batch", max_concurrent=2, force=False,
        requested_ids=[1, 2, 3, 4, 5], to_download=[entry(1), entry(2), entry(3)],
        already_downloaded=[AlreadyDownloaded(message_id=4, file_path="/srv/media/videos/4",
                                              relative_path="videos/4.mp4", size=44)],
        failed_to_start=[FileFailure(message_id=5, error=ErrorCode.message_not_found,
                                     detail="no message 5", suggestion="check the id")],
    ))
    for m in (1, 2):
        await feed.events("b1", PermitGranted(batch_id="b1", at=at(1), message_id=m,
                                              job_id=f"b1:{m}"),
                          JobDispatched(batch_id="b1", at=at(1), message_id=m,
                                        job_id=f"b1:{m}", attached=False))
    await feed.events("s1", BatchStarted(
        batch_id="s1", at=at(2), kind="single", max_concurrent=1, force=False,
        requested_ids=[1], to_download=[entry(1)], already_downloaded=[], failed_to_start=[],
    ), PermitGranted(batch_id="s1", at=at(2), message_id=1, job_id="s1:1"),
        JobDispatched(batch_id="s1", at=at(2), message_id=1, job_id="b1:1", attached=True))
    await feed.progress("b1:1", 1, 450, t=3)
    await feed.progress("b1:2", 2, 300, t=3, state="waiting", wait_seconds=42)


async def finish_file_1(feed: Feed) -> None:
    await feed.completed("b1:1", 1, t=5, parties=["b1", "s1"])
    for b in ("b1", "s1"):
        await feed.events(b, FileCompleted(batch_id=b, at=at(6), message_id=1, job_id="b1:1",
                                           file_path="/srv/media/videos/1.mp4",
                                           relative_path="videos/1.mp4", size=1000))
    await feed.events("s1", BatchFinished(batch_id="s1", at=at(6), overall_status="completed",
                                          completed=1, failed=0))


async def dump(db) -> dict[str, list[tuple]]:
    keys = {"batches": "batch_id", "batch_files": "batch_id, message_id", "jobs": "job_id",
            "projection_state": "only_row"}
    return {t: [tuple(r) for r in await db.fetch(f"SELECT * FROM {t} ORDER BY {k}")]
            for t, k in keys.items()}


async def test_batches_are_projected_with_live_per_file_state(projector, feed, js, db, settings):
    await start_two_batches(feed)
    await catch_up(js, db, settings.names)

    status = await batch_status(db, "b1")
    body = status.model_dump(exclude_none=True)
    files = {f["message_id"]: f for f in body.pop("files")}
    assert body == {
        "batch_id": "b1", "total_files": 5, "completed": 1, "downloading": 2, "failed": 1,
        "pending": 1, "cancelled": 0, "paused": 0, "overall_status": "in_progress",
        "finished": False,
        "summary": "1 of 5 files completed, 1 downloading, 1 paused by a Telegram rate "
                   "limit, 1 waiting for its turn, 1 failed",
        "max_concurrent": 2, "priority": "normal",
    }
    assert files[1] == {"message_id": 1, "status": "downloading", "progress": 45,
                        "downloaded_size": 450, "total_size": 1000, "download_speed": 100,
                        "estimated_time_remaining": 6}
    assert (files[2]["status"], files[2]["wait_seconds"]) == ("waiting", 42)
    assert files[3] == {"message_id": 3, "status": "pending", "progress": 0,
                        "total_size": 1000}
    assert files[4] == {"message_id": 4, "status": "completed", "progress": 100,
                        "file_path": "/srv/media/videos/4", "total_size": 44,
                        "download_url": "/media/videos/4.mp4", "already_downloaded": True,
                        "reason": "file_exists"}
    assert (files[5]["status"], files[5]["error"], files[5]["suggestion"]) == (
        "failed", "message_not_found", "check the id")

    single = await batch_status(db, "s1")  # attached: it follows b1's download
    assert (single.files[0].status, single.files[0].progress) == ("downloading", 45)
    tracked = await message_status(db, 1)
    assert (tracked.status, tracked.download_id) == ("downloading", "s1")

    await feed.completed("b1:1", 1, t=5, parties=["b1", "s1"])
    await catch_up(js, db, settings.names)
    # the outcome arrives before the orchestrator's FileCompleted: already shown as done
    assert (await batch_status(db, "s1")).files[0].download_url == "/media/videos/1.mp4"

    await finish_file_1(feed)
    await catch_up(js, db, settings.names)
    single = await batch_status(db, "s1")
    assert (single.overall_status, single.finished, single.summary) == (
        "completed", True, "1 of 1 file completed")
    assert await batch_status(db, "nope") is None


async def test_cancel_stops_unfinished_files_and_keeps_completed_ones(projector, feed, js, db,
                                                                     settings):
    await feed.events("b", BatchStarted(
        batch_id="b", at=at(0), kind="batch", max_concurrent=3, force=False,
        requested_ids=[1, 2, 3], to_download=[entry(1), entry(2), entry(3)],
        already_downloaded=[], failed_to_start=[],
    ), PermitGranted(batch_id="b", at=at(1), message_id=1, job_id="b:1"),
        PermitGranted(batch_id="b", at=at(1), message_id=2, job_id="b:2"),
        FileCompleted(batch_id="b", at=at(2), message_id=1, job_id="b:1",
                      file_path="/m/1", relative_path="videos/1.mp4", size=1000),
        BatchCancelled(batch_id="b", at=at(3), stopped=[1, 2, 3]))
    await catch_up(js, db, settings.names)
    status = await batch_status(db, "b")
    assert [f.status for f in status.files] == ["completed", "cancelled", "cancelled"]
    assert (status.overall_status, status.finished, status.summary) == (
        "cancelled", True, "Cancelled: 1 file completed, 2 stopped")
    finished_at = await db.fetchval("SELECT finished_at FROM batches WHERE batch_id = 'b'")
    assert finished_at == at(3)


async def test_redeliveries_and_restarts_change_nothing(projector, feed, js, db, settings, nc):
    await start_two_batches(feed)
    await finish_file_1(feed)
    await catch_up(js, db, settings.names)
    before = await dump(db)

    # every retained message once more, as a redelivery would bring them
    again = []
    for stream in (settings.names.events_stream, settings.names.outcomes_stream,
                   settings.names.progress_stream):
        state = (await js.stream_info(stream)).state
        for seq in range(state.first_seq, state.last_seq + 1):
            try:
                msg = await js.get_msg(stream, seq)
            except Exception:
                continue  # superseded progress is gone from the stream
            again.append(Delivery(stream, seq, msg.data))
    assert len(again) == 10  # 7 messages of 11 events, 1 outcome, 2 files' latest progress
    assert await projector.apply(again) == 0
    assert await dump(db) == before

    await projector.stop()
    restarted = Projector(settings, nc)
    await restarted.start()
    try:
        await feed.events("b2", BatchFinished(batch_id="b2", at=at(9),
                                              overall_status="completed", completed=0,
                                              failed=0))
        await restarted.wait_until(await stream_targets(js, settings.names))
        # it resumed after the stored positions: only the new event was read
        assert restarted.stats.applied == {settings.names.events_stream: 1}
        after = await dump(db)
        assert after["batches"] == before["batches"]  # no b2 row: it never started
        assert after["batch_files"] == before["batch_files"]
        assert after["jobs"] == before["jobs"]
    finally:
        await restarted.stop()


async def test_a_projector_whose_positions_another_moved_stops_without_writing(
        projector, feed, js, db, settings):
    """A projector whose lock's session was lost (a database restart) while another one took
    the lock and wrote on must not write over that one's rows when its own database steps
    succeed again: its next transaction finds the positions moved, rolls back, and the
    projector stops for its supervisor (it then waits as the standby)."""
    await start_two_batches(feed)
    await catch_up(js, db, settings.names)
    moved = {s: seq + 100 for s, seq in (await load_positions(db)).items()}  # by the other
    await save_positions(db, moved, await load_positions(db))
    before = await dump(db)
    await feed.events("b1", BatchFinished(batch_id="b1", at=at(9), overall_status="failed",
                                          completed=0, failed=5))
    with pytest.raises(ProjectionLocked, match="another projector wrote the read model"):
        await asyncio.wait_for(projector.serve(asyncio.Event()), 30)
    assert await dump(db) == before  # b1 is not finished: nothing was written


async def test_positions_move_only_from_where_this_projector_left_them(db):
    async with db.transaction():
        await save_positions(db, {"S": 5, "T": 1}, {})
    # stored by another first, moved since, or another stream stored by another
    for held in ({}, {"S": 4, "T": 1}, {"S": 5}):
        with pytest.raises(PositionsMoved):
            async with db.transaction():
                await save_positions(db, {"S": 9}, held)
    async with db.transaction():
        await save_positions(db, {"S": 9}, {"S": 5, "T": 1})
    assert await load_positions(db) == {"S": 9, "T": 1}
    assert await db.fetchval("SELECT count(*) FROM projection_state") == 1


async def test_positions_stored_a_row_per_stream_are_carried_into_the_one_row(settings):
    conn = await connect(settings.database_url, "public")
    schema = settings.db_schema + "_old"
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"; SET search_path TO "{schema}"')
        await conn.execute("CREATE TABLE schema_migrations (version INT PRIMARY KEY,"
                           " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
        for version, sql in MIGRATIONS:
            if version < 9:  # the release before positions moved into one row
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations VALUES ($1)", version)
        await conn.execute("INSERT INTO projection_positions VALUES ('E', 7), ('P', 40)")
        await migrate(conn, schema)
        assert await load_positions(conn) == {"E": 7, "P": 40}
    finally:
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await conn.close()


async def test_a_burst_of_progress_reaches_the_database_at_most_about_once_a_second(
        feed, js, db, settings, nc):
    throttled = Projector(settings.model_copy(update={"progress_interval": 1.0}), nc)
    await throttled.start()
    try:
        await feed.events("b", BatchStarted(
            batch_id="b", at=at(0), kind="batch", max_concurrent=1, force=False,
            requested_ids=[7], to_download=[entry(7)], already_downloaded=[],
            failed_to_start=[],
        ), PermitGranted(batch_id="b", at=at(1), message_id=7, job_id="b:7"))
        await asyncio.gather(*(feed.progress("b:7", 7, 20 * i, t=2 + i / 100)
                               for i in range(1, 51)))
        await throttled.wait_until(await stream_targets(js, settings.names))
        positions = await catch_up(js, db, settings.names)
        # (the stream keeps only a file's latest report, so some of the 50 may be gone
        # before delivery; the rest arrive within the same second)
        assert throttled.stats.applied[settings.names.progress_stream] >= 1
        assert throttled.stats.progress_flushes <= 2
        assert throttled.stats.progress_rows <= 2
        assert positions[settings.names.progress_stream] == (
            await js.stream_info(settings.names.progress_stream)).state.last_seq
        row = await db.fetchrow("SELECT state, downloaded_size FROM jobs WHERE job_id = 'b:7'")
        assert tuple(row) == ("downloading", 1000)
    finally:
        await throttled.stop()


async def test_rebuild_reproduces_exactly_the_same_rows(projector, feed, js, db, settings):
    await start_two_batches(feed)
    await finish_file_1(feed)
    await feed.progress("b1:2", 2, 700, t=7)  # flood wait over, downloading again
    await catch_up(js, db, settings.names)
    before = await dump(db)
    assert len(before["batch_files"]) == 6 and len(before["jobs"]) == 2

    with pytest.raises(ProjectionLocked):  # never while a projector is writing
        await rebuild(settings)
    await projector.stop()
    counts = await rebuild(settings)
    # messages replayed per stream: 11 events in 7 decisions
    assert counts == {"events": 7, "outcomes": 1, "progress": 2, "batches": 2,
                      "batch_files": 6, "jobs": 2}
    assert await dump(db) == before


async def test_a_paused_and_resumed_batch_is_projected_and_rebuilt_the_same(
        projector, feed, js, db, settings):
    await start_two_batches(feed)
    await feed.events("b1", ConcurrencyChanged(batch_id="b1", at=at(3), max_concurrent=3,
                                               previous=2),
                      PriorityChanged(batch_id="b1", at=at(3), priority="high",
                                      previous="normal"),
                      BatchPaused(batch_id="b1", at=at(4), stopped=[1, 2]))
    # the job of file 2 stopped for the pause, addressed to nobody (file 1 goes on for s1),
    # with the bytes its .part kept
    stopped = DownloadOutcome(job_id="b1:2", message_id=2, status="cancelled", parties=[],
                              at=at(5), downloaded_size=300)
    await js.publish(settings.names.file_done(2), stopped.model_dump_json().encode())
    await catch_up(js, db, settings.names)
    status = await batch_status(db, "b1")
    assert (status.overall_status, status.finished, status.max_concurrent,
            status.priority) == ("paused", False, 3, "high")
    assert [f.status for f in status.files] == [
        "paused", "paused", "pending", "completed", "failed"]
    assert (status.files[1].downloaded_size, status.files[1].progress) == (300, 30)
    paused_rows = await dump(db)

    await feed.events("b1", BatchResumed(batch_id="b1", at=at(6), resumed=[1, 2]),
                      *(PermitGranted(batch_id="b1", at=at(6), message_id=m,
                                      job_id=f"b1:{m}:2") for m in (1, 2, 3)))
    await catch_up(js, db, settings.names)
    status = await batch_status(db, "b1")
    assert status.overall_status == "in_progress"
    assert [f.status for f in status.files][:3] == ["queued", "queued", "queued"]
    resumed_rows = await dump(db)
    assert resumed_rows != paused_rows

    await projector.stop()
    await rebuild(settings)
    assert await dump(db) == resumed_rows


async def test_each_change_publishes_the_batch_status_on_nats(projector, feed, js, db,
                                                              settings, nc):
    received: asyncio.Queue[dict] = asyncio.Queue()

    async def next_snapshot(matching) -> dict:
        while True:
            snapshot = await asyncio.wait_for(received.get(), 10)
            if matching(snapshot):
                return snapshot

    async def on_snapshot(msg) -> None:
        await received.put(json.loads(msg.data))

    sub = await nc.subscribe(settings.names.batch_progress("s1"), cb=on_snapshot)
    try:
        await start_two_batches(feed)
        live = await next_snapshot(lambda s: s["files"][0]["status"] == "downloading")
        assert live["files"][0]["progress"] == 45  # progress reaches it through b1's job
        await finish_file_1(feed)
        final = await next_snapshot(lambda s: s["finished"])
    finally:
        await sub.unsubscribe()
    assert final == json.loads(snapshot_json(await batch_status(db, "s1")))


async def test_catch_up_gives_up_at_its_deadline_when_nothing_projects(feed, js, db, settings):
    await feed.events("b", BatchFinished(batch_id="b", at=at(0), overall_status="completed",
                                         completed=0, failed=0))
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await catch_up(js, db, settings.names, within=0.2)
    assert time.monotonic() - started < 5


# --- the process --------------------------------------------------------------------------


async def test_the_process_refuses_to_start_before_tgdl_migrate(servers):
    fresh = ProjectorSettings(nats_url=servers.nats_url, database_url=servers.database_url,
                              namespace=f"t{uuid.uuid4().hex[:10]}",
                              db_schema=f"t_{uuid.uuid4().hex[:10]}")
    with pytest.raises(TopologyMissing, match="tgdl migrate"):
        await asyncio.wait_for(run_projector(fresh, asyncio.Event()), 10)


async def test_the_process_projects_and_publishes_snapshots_until_stopped(feed, js, db, settings,
                                                                          nc):
    received: asyncio.Queue[dict] = asyncio.Queue()

    async def on_snapshot(msg) -> None:
        await received.put(json.loads(msg.data))
    sub = await nc.subscribe(settings.names.batch_progress("s1"), cb=on_snapshot)
    stop = asyncio.Event()
    process = asyncio.create_task(run_projector(settings, stop))
    try:
        await start_two_batches(feed)
        await finish_file_1(feed)
        await catch_up(js, db, settings.names)
        while not (await asyncio.wait_for(received.get(), 10))["finished"]:
            pass
    finally:
        stop.set()
        await asyncio.wait_for(process, 10)
        await sub.unsubscribe()
    assert (await batch_status(db, "s1")).finished
