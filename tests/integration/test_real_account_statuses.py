"""What a user of a real Telegram account sees in each failure case, through every service.

The gateway (HTTP, with its lifespan), orchestrator, projector and one or two downloaders
run in this process over the real NATS and PostgreSQL. Each downloader's Telegram port is
the Telethon adapter (`TelethonTelegram`) on Telethon's real client, answered by the
scripted Telegram of `fakes/telegram_server.py`. The tests only speak HTTP to the service;
the fake's request log, the public progress subject and the flood bucket are what they
look at to tell *why* the status was right.

`ClockedTelegram` adds three things the scripted server leaves out:
- its clock is real time, so a flood wait runs out by itself while the services wait;
- file parts can be slowed (`part_delay`), so a download is still running when we look;
- every request is stamped with when it arrived, which replica sent it and how it was
  answered.
It also holds a flood wait against the replica that hit it, not the whole account: then
the other replica pausing can only come from the shared deadline in the flood bucket,
which is what the flood test checks (with account-wide waits the other replica would pause
after one refusal of its own, gate or no gate).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from fakes.telegram_server import (
    Channel,
    FakeSender,
    Fault,
    RpcFailure,
    StoredFile,
    TelegramServer,
    content,
    sha256,
)
from faststream.nats import NatsBroker
from nats.aio.client import Client as NATS
from telethon.sessions import StringSession
from telethon.tl import functions

from tgdl.contracts.catalog import CatalogEntry, MediaKind
from tgdl.contracts.config import CommonSettings
from tgdl.contracts.jobs import DownloadProgress
from tgdl.contracts.paths import relative_path
from tgdl.contracts.subjects import Names
from tgdl.db import catalog
from tgdl.db.connection import connect as db_connect
from tgdl.downloader import app as downloader_app
from tgdl.downloader.files import part_path, recorded_parts
from tgdl.downloader.settings import DownloaderSettings
from tgdl.downloader.telegram.port import PART_SIZE
from tgdl.downloader.telegram.telethon import TelethonTelegram
from tgdl.gateway.app import create_app
from tgdl.gateway.settings import GatewaySettings
from tgdl.launcher.prepare import prepare
from tgdl.orchestrator.app import OrchestratorService
from tgdl.orchestrator.settings import OrchestratorSettings
from tgdl.projector.app import run as run_projector
from tgdl.projector.settings import ProjectorSettings
from tgdl.telegram.client import client_options

RS = PART_SIZE  # 1 MiB: every GetFile asks for one such part
# One part of a file at a time here: these tests follow each file's requests in order
# (parallel parts have tests of their own, test_parallel_parts.py).
ACK_WAIT = 3.0  # seconds before JetStream hands a silent downloader's job to another
REQUEST_TIMEOUT = 1.0  # the adapter's limit for one Telegram request
GetFile = functions.upload.GetFileRequest
T = TypeVar("T")


# --- the scripted Telegram, on real time -----------------------------------------------------


@dataclass
class Stamp:
    at: float  # wall clock (time.time()), comparable with the flood bucket's deadline
    replica: str
    request: Any
    answer: str = "unanswered"  # or "served", Telegram's error message, "dropped"


@dataclass(frozen=True)
class Posted:
    entry: CatalogEntry
    data: bytes
    file: StoredFile
    channel_id: int


_WRAPPERS = (
    functions.InvokeWithLayerRequest,
    functions.InitConnectionRequest,
    functions.InvokeWithoutUpdatesRequest,
)


class ClockedTelegram(TelegramServer):
    def __init__(self) -> None:
        self._epoch = time.monotonic()
        super().__init__()
        self.part_delay = 0.0  # seconds before each file part is answered
        self.timeline: list[Stamp] = []
        self._replica_of: dict[bytes, str] = {}
        self._floods: dict[str, dict[type, float]] = {}
        self._message_ids = itertools.count(101)

    # The base class keeps a virtual clock moved by `advance`; here real time moves it.
    @property  # type: ignore[override]
    def clock(self) -> float:
        return time.monotonic() - self._epoch

    @clock.setter
    def clock(self, value: float) -> None:
        self._epoch = time.monotonic() - value

    def session_for(self, replica: str) -> str:
        session = self.logged_in_session()
        self._replica_of[StringSession(session).auth_key.key] = replica
        return session

    async def handle(self, sender: FakeSender, request: Any) -> Any:
        inner = request
        while isinstance(inner, _WRAPPERS):
            inner = inner.query
        replica = self._replica_of.get(sender.auth_key.key, "exported sender")
        stamp = Stamp(time.time(), replica, inner)
        self.timeline.append(stamp)
        # Flood waits hold per replica (module docstring). The base class reads and writes
        # `flood_until` before its first await, so pointing it at this replica's deadlines
        # right before the call is enough.
        self.flood_until = self._floods.setdefault(replica, {})
        try:
            result = await super().handle(sender, request)
            if isinstance(inner, GetFile) and self.part_delay:
                await asyncio.sleep(self.part_delay)
        except RpcFailure as failure:
            stamp.answer = failure.message
            raise
        except ConnectionError:
            stamp.answer = "dropped"
            raise
        stamp.answer = "served"
        return result

    # --- content ---------------------------------------------------------------------------

    def post(self, channel: Channel, size: int, name: str) -> Posted:
        data = content(size, name)
        telegram_id = self.post_document(channel, data, file_name=f"{name}.bin")
        entry = CatalogEntry(
            message_id=next(self._message_ids), chat=channel.username or str(channel.marked_id),
            telegram_message_id=telegram_id, media_kind=MediaKind.document,
            file_name=f"{name}.bin", mime_type="application/octet-stream", size=size,
        )
        return Posted(entry, data, self.file_of(channel, telegram_id), channel.id)

    # --- what was asked --------------------------------------------------------------------

    def parts(self, posted: Posted, replica: str | None = None) -> list[Stamp]:
        """GetFile requests for this file, in arrival order."""
        return [s for s in self.timeline if isinstance(s.request, GetFile)
                and s.request.location.id == posted.file.id
                and (replica is None or s.replica == replica)]

    def message_fetches(self, posted: Posted) -> list[Stamp]:
        return [s for s in self.timeline
                if isinstance(s.request, functions.channels.GetMessagesRequest)
                and s.request.channel.channel_id == posted.channel_id
                and any(getattr(i, "id", None) == posted.entry.telegram_message_id
                        for i in s.request.id)]


def offsets(stamps: list[Stamp], answer: str | None = None) -> list[int]:
    return [s.request.offset for s in stamps if answer is None or s.answer == answer]


def every_part(posted: Posted, start: int = 0) -> list[int]:
    return list(range(start, len(posted.data), RS))


# --- the services ---------------------------------------------------------------------------


async def eventually(probe: Callable[[], Awaitable[T | None]], what: str,
                     within: float = 20.0) -> T:
    """Poll `probe` until it returns something truthy; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for: {what}")
        await asyncio.sleep(0.05)


def file_in(body: dict, posted: Posted) -> dict:
    return next(f for f in body["files"] if f["message_id"] == posted.entry.message_id)


class Stack:
    """Gateway, orchestrator, projector and downloaders of one test."""

    def __init__(self, servers, isolation, nc: NATS, telegram: ClockedTelegram,
                 brokers: dict[str, NatsBroker], max_deliver: int) -> None:
        self.common: dict[str, Any] = dict(
            nats_url=servers.nats_url, database_url=servers.database_url,
            namespace=isolation.namespace, db_schema=isolation.schema,
            media_root=isolation.media_root, ack_wait=ACK_WAIT, max_deliver=max_deliver,
        )
        self.names = Names(isolation.namespace)
        self.media_root: Path = isolation.media_root
        self.nc = nc
        self.js = nc.jetstream()
        self.telegram = telegram
        self.brokers = brokers  # replica -> its FastStream broker (to cut its connection)
        self.progress: list[DownloadProgress] = []  # from the public progress subject
        self.http: httpx.AsyncClient
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._downloaders: dict[str, tuple[asyncio.Task, asyncio.Event]] = {}
        self._exit = contextlib.AsyncExitStack()

    async def start(self, replicas: int) -> None:
        await prepare(CommonSettings(**self.common))  # as `tgdl migrate`

        async def on_progress(msg) -> None:
            self.progress.append(DownloadProgress.model_validate_json(msg.data))
        sub = await self.nc.subscribe(self.names.all_file_progress, cb=on_progress)
        self._exit.push_async_callback(sub.unsubscribe)

        orchestrator = OrchestratorService(OrchestratorSettings(**self.common))
        self._tasks.append(asyncio.create_task(orchestrator.run(self._stop)))
        self._tasks.append(asyncio.create_task(run_projector(
            ProjectorSettings(**self.common, progress_interval=0.1), self._stop)))
        for i in range(replicas):
            self.start_downloader(f"d{i}")

        app = create_app(GatewaySettings(**self.common))
        await self._exit.enter_async_context(app.router.lifespan_context(app))
        self.http = await self._exit.enter_async_context(httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://localhost"))

        async def ready() -> bool:
            with contextlib.suppress(Exception):
                info = await self.js.consumer_info(self.names.jobs_stream,
                                                   self.names.downloader_consumer)
                return info.num_waiting >= replicas and hasattr(orchestrator, "orch")
            return False
        await eventually(ready, "every service ready")

    def start_downloader(self, replica: str) -> None:
        port = TelethonTelegram(
            self.telegram.client(self.telegram.session_for(replica), **client_options()),
            request_timeout=REQUEST_TIMEOUT,
        )
        settings = DownloaderSettings(**self.common, telegram="telethon", replica=replica,
                                      slots=1, retry_base_delay=0.1, parts_per_file=1,
                                      requests_per_connection=1)
        stop = asyncio.Event()
        task = asyncio.create_task(downloader_app.serve(settings, stop, port=port))
        self._downloaders[replica] = (task, stop)

    async def kill_downloader(self, replica: str) -> None:
        """As if the process died: its NATS connection goes first, so no ack, nak or
        heartbeat of the running job ever reaches JetStream; then its task is cancelled
        (its Telethon client closes, bytes already written stay in the .part file)."""
        task, _ = self._downloaders.pop(replica)
        await self.brokers[replica].connection.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def stop(self) -> None:
        await self._exit.aclose()
        self._stop.set()
        for _, stop in self._downloaders.values():
            stop.set()
        tasks = [*self._tasks, *(t for t, _ in self._downloaders.values())]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        crashed = [r for r in results if isinstance(r, BaseException)]
        if crashed:
            raise crashed[0]  # a service died during the test: say so

    # --- the user's side -------------------------------------------------------------------

    async def start_batch(self, files: list[Posted], max_concurrent: int = 3) -> str:
        conn = await db_connect(self.common["database_url"], self.common["db_schema"])
        try:
            await catalog.upsert(conn, [p.entry for p in files])
        finally:
            await conn.close()
        response = await self.http.post("/api/media/batch-download", json={
            "message_ids": [p.entry.message_id for p in files],
            "max_concurrent": max_concurrent})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["started_downloads"] == [p.entry.message_id for p in files], body
        return body["batch_id"]

    async def status(self, batch_id: str) -> dict | None:
        response = await self.http.get(f"/api/media/batch-status/{batch_id}")
        if response.status_code == 404:
            return None  # not projected yet
        assert response.status_code == 200, response.text
        return response.json()

    async def finished(self, batch_id: str, within: float = 30.0) -> dict:
        async def done() -> dict | None:
            body = await self.status(batch_id)
            return body if body and body["finished"] else None
        return await eventually(done, f"batch {batch_id} finished", within)

    async def assert_served(self, body: dict, posted: Posted) -> None:
        """Completed, on disk and over HTTP, with exactly the bytes Telegram holds."""
        file = file_in(body, posted)
        assert file["status"] == "completed", file
        assert file["progress"] == 100
        rel = str(relative_path(posted.entry))
        assert file["download_url"] == f"/media/{rel}"
        assert file["file_path"] == str(self.media_root / rel)
        assert sha256(Path(file["file_path"]).read_bytes()) == sha256(posted.data)
        assert not part_path(Path(file["file_path"])).exists()
        response = await self.http.get(file["download_url"])
        assert response.status_code == 200
        assert sha256(response.content) == sha256(posted.data)

    def progress_of(self, posted: Posted) -> list[DownloadProgress]:
        return [p for p in self.progress if p.message_id == posted.entry.message_id]

    async def flood_deadline(self) -> dict | None:
        kv = await self.js.key_value(self.names.flood_bucket)
        with contextlib.suppress(Exception):
            entry = await kv.get("default")  # the account's key
            return json.loads(entry.value) if entry.value else None
        return None


@pytest.fixture
def telegram() -> ClockedTelegram:
    return ClockedTelegram()


@pytest.fixture
async def launch(servers, isolation, nc, telegram, monkeypatch) -> AsyncIterator:
    brokers: dict[str, NatsBroker] = {}
    real_create_broker = downloader_app.create_broker

    def recording_create_broker(settings, *args, **kwargs) -> NatsBroker:
        brokers[settings.replica] = broker = real_create_broker(settings, *args, **kwargs)
        return broker
    monkeypatch.setattr(downloader_app, "create_broker", recording_create_broker)
    stacks: list[Stack] = []

    async def start(replicas: int = 1, max_deliver: int = 6) -> Stack:
        stack = Stack(servers, isolation, nc, telegram, brokers, max_deliver)
        stacks.append(stack)
        await stack.start(replicas)
        return stack

    yield start
    for stack in stacks:
        await stack.stop()


# --- 1. the ordinary case -------------------------------------------------------------------


async def test_a_normal_file_completes_with_telegrams_exact_bytes(telegram, launch):
    news = telegram.add_channel("news")
    clip = telegram.post(news, 2 * RS + 1234, "clip")
    stack = await launch()

    batch = await stack.start_batch([clip])
    body = await stack.finished(batch)

    assert (body["overall_status"], body["completed"], body["failed"]) == ("completed", 1, 0)
    await stack.assert_served(body, clip)
    assert offsets(telegram.parts(clip)) == every_part(clip)  # each part asked once


# --- 2. flood wait, shared by the replicas of the account -----------------------------------


async def test_a_flood_wait_pauses_every_replica_and_shows_as_waiting(telegram, launch):
    telegram.part_delay = 0.1  # the second file is still downloading when the wait starts
    news = telegram.add_channel("news")
    first = telegram.post(news, 6 * RS, "first")
    second = telegram.post(news, 16 * RS, "second")
    telegram.fail_file_at(2 * RS, "FLOOD_WAIT_3", code=420, file_id=first.file.id)
    stack = await launch(replicas=2)

    batch = await stack.start_batch([first, second], max_concurrent=2)

    async def first_waits() -> dict | None:
        body = await stack.status(batch)
        return body if body and file_in(body, first)["status"] == "waiting" else None
    body = await eventually(first_waits, "the flooded file shows as waiting")
    assert file_in(body, first)["wait_seconds"] > 0
    assert (body["overall_status"], body["failed"]) == ("in_progress", 0)
    assert "paused by a Telegram rate limit" in body["summary"]
    shared = await stack.flood_deadline()
    refusal = next(s for s in telegram.parts(first) if s.answer.startswith("FLOOD_WAIT"))
    assert shared is not None and shared["until"] >= refusal.at + 3  # covers Telegram's wait

    async def second_waits() -> dict | None:
        body = await stack.status(batch)
        return body if body and file_in(body, second)["status"] == "waiting" else None
    body = await eventually(second_waits, "the other replica's file shows as waiting too")
    assert file_in(body, second)["wait_seconds"] > 0

    body = await stack.finished(batch)
    assert (body["overall_status"], body["completed"]) == ("completed", 2)
    await stack.assert_served(body, first)
    await stack.assert_served(body, second)

    # The two files went to different replicas, and during Telegram's wait neither one
    # asked for a part: at most the request already on its way when the wait began.
    replicas = [{s.replica for s in telegram.parts(p)} for p in (first, second)]
    assert all(len(r) == 1 for r in replicas) and replicas[0] != replicas[1], replicas
    during = [s for s in telegram.timeline
              if isinstance(s.request, GetFile) and refusal.at < s.at < refusal.at + 3]
    assert len(during) <= 1, [(s.replica, s.request.offset, s.answer) for s in during]
    # Every part served exactly once: both resumed where they stopped.
    assert sorted(offsets(telegram.parts(first), "served")) == every_part(first)
    assert sorted(offsets(telegram.parts(second), "served")) == every_part(second)
    assert [s.answer for s in telegram.parts(first) if s.answer != "served"] == ["FLOOD_WAIT_3"]
    assert all(s.answer == "served" for s in telegram.parts(second))


# --- 3. expired file reference --------------------------------------------------------------


async def test_an_expired_file_reference_is_refreshed_and_the_file_continues(telegram, launch):
    news = telegram.add_channel("news")
    doc = telegram.post(news, 3 * RS + 99, "doc")
    telegram.expire_reference_at(RS, file_id=doc.file.id)
    stack = await launch()

    batch = await stack.start_batch([doc])
    body = await stack.finished(batch)

    assert body["overall_status"] == "completed"
    await stack.assert_served(body, doc)
    parts = telegram.parts(doc)
    assert [(s.request.offset, s.answer) for s in parts] == [
        (0, "served"), (RS, "FILE_REFERENCE_EXPIRED"), (RS, "served"),
        (2 * RS, "served"), (3 * RS, "served")]
    fetches = telegram.message_fetches(doc)
    assert len(fetches) == 2  # resolve, then the refresh between the two requests at RS
    assert parts[1].at < fetches[1].at < parts[2].at
    assert {p.attempt for p in stack.progress_of(doc)} == {1}  # no retry was needed


# --- 4. timeouts and dropped connections ----------------------------------------------------


async def test_a_dropped_connection_and_a_timeout_are_retried_until_done(telegram, launch):
    news = telegram.add_channel("news")
    doc = telegram.post(news, 4 * RS, "doc")
    telegram.faults.append(Fault(RS, "drop", file_id=doc.file.id))  # attempt 1 ends at RS
    telegram.faults.append(Fault(2 * RS, "hang", file_id=doc.file.id))  # attempt 2 at 2 RS
    stack = await launch()

    batch = await stack.start_batch([doc])
    seen: list[str] = []

    async def downloading_again() -> dict | None:
        body = await stack.status(batch)
        if body:
            seen.append(file_in(body, doc)["status"])
        # Attempt 1 never got past RS: two parts on disk means the retry is downloading.
        return body if body and file_in(body, doc).get("downloaded_size") == 2 * RS else None
    body = await eventually(downloading_again, "the retried job downloading again")
    assert file_in(body, doc)["status"] == "downloading"
    assert body["overall_status"] == "in_progress"

    body = await stack.finished(batch)
    assert body["overall_status"] == "completed"
    await stack.assert_served(body, doc)
    assert "failed" not in seen and "waiting" not in seen
    assert [(s.request.offset, s.answer) for s in telegram.parts(doc)] == [
        (0, "served"), (RS, "dropped"),  # attempt 1
        (RS, "served"), (2 * RS, "unanswered"),  # attempt 2, resumed from the .part file
        (2 * RS, "served"), (3 * RS, "served"),  # attempt 3
    ]
    states = [(p.attempt, p.state) for p in stack.progress_of(doc)]
    assert (1, "retrying") in states and (2, "retrying") in states
    assert (3, "downloading") in states


# --- 5. failures that keep happening --------------------------------------------------------


async def test_a_file_that_always_times_out_fails_and_the_batch_says_so(telegram, launch):
    news = telegram.add_channel("news")
    good = telegram.post(news, RS + 10, "good")
    stuck = telegram.post(news, 2 * RS, "stuck")
    for _ in range(5):  # more than any number of attempts
        telegram.faults.append(Fault(0, "hang", file_id=stuck.file.id))
    stack = await launch(max_deliver=2)

    batch = await stack.start_batch([good, stuck], max_concurrent=2)
    body = await stack.finished(batch)

    assert (body["overall_status"], body["completed"], body["failed"]) == ("failed", 1, 1)
    assert body["summary"] == "1 of 2 files completed, 1 failed"
    await stack.assert_served(body, good)
    failed = file_in(body, stuck)
    assert failed["status"] == "failed"
    assert failed["error"] in ("retries_exhausted", "network_error")
    assert failed["detail"] and failed["suggestion"]
    assert [s.answer for s in telegram.parts(stuck)] == ["unanswered"] * 2  # two tries
    assert not (stack.media_root / relative_path(stuck.entry)).exists()  # never half-written


# --- 6. messages that cannot be downloaded --------------------------------------------------


async def test_deleted_and_forbidden_messages_fail_at_once_and_others_complete(
    telegram, launch
):
    news = telegram.add_channel("news")
    secret = telegram.add_channel("secret", forbidden=True)
    gone = telegram.post(news, 5000, "gone")
    telegram.delete(news, gone.entry.telegram_message_id)
    private = telegram.post(secret, 6000, "private")
    fine = telegram.post(news, RS + 1, "fine")
    stack = await launch()

    batch = await stack.start_batch([gone, private, fine])
    body = await stack.finished(batch)

    assert (body["overall_status"], body["completed"], body["failed"]) == ("failed", 1, 2)
    assert body["summary"] == "1 of 3 files completed, 2 failed"
    await stack.assert_served(body, fine)
    for posted, error in ((gone, "message_deleted"), (private, "access_denied")):
        file = file_in(body, posted)
        assert (file["status"], file["error"]) == ("failed", error), file
        assert file["detail"] and file["suggestion"]
        assert telegram.parts(posted) == []
        assert "retrying" not in {p.state for p in stack.progress_of(posted)}  # at once
    assert len(telegram.message_fetches(gone)) == 1
    assert "CHANNEL_PRIVATE" in file_in(body, private)["detail"]


# --- 7. a downloader killed mid-file --------------------------------------------------------


async def test_after_a_kill_the_next_replica_resumes_from_the_part_file(telegram, launch):
    telegram.part_delay = 0.15
    news = telegram.add_channel("news")
    big = telegram.post(news, 8 * RS + 4321, "big")
    stack = await launch(replicas=1)
    part = part_path(stack.media_root / relative_path(big.entry))

    batch = await stack.start_batch([big])

    final = stack.media_root / relative_path(big.entry)

    async def some_parts_on_disk() -> bool:
        return len(recorded_parts(final)) >= 3
    await eventually(some_parts_on_disk, "a few parts on disk")
    await stack.kill_downloader("d0")
    done = recorded_parts(final)
    resume_at = (max(done) + 1) * RS
    assert set(every_part(big)[: resume_at // RS]) <= set(offsets(telegram.parts(big, "d0")))
    # The kill also tore a write: bytes landed in the next part, never recorded as done.
    with part.open("r+b") as torn:
        torn.seek(resume_at)
        torn.write(bytes(100_000))

    stack.start_downloader("d1")
    body = await stack.finished(batch, within=ACK_WAIT + 30)

    assert body["overall_status"] == "completed"
    await stack.assert_served(body, big)
    second_run = telegram.parts(big, "d1")
    assert second_run[0].request.offset == resume_at  # not 0
    assert offsets(second_run) == every_part(big, start=resume_at)
    # The same job came back to the new replica (JetStream's second delivery).
    killed = {p.job_id for p in stack.progress_of(big) if p.attempt == 1}
    resumed = {p.job_id for p in stack.progress_of(big) if p.attempt == 2}
    assert len(killed) == 1 and resumed == killed
