"""The downloader service alone (its FastStream consumer and worker) on real NATS, fed jobs
the way the orchestrator queues them, downloading from the simulated Telegram."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sim_helpers import running_sim
from waiting import until

from tgdl.bus.leases import Leases
from tgdl.bus.samefile import FileRecords
from tgdl.bus.topology import QueuePolicy, ensure_topology
from tgdl.contracts.catalog import CatalogEntry
from tgdl.contracts.jobs import DownloadJob, DownloadOutcome, DownloadProgress
from tgdl.contracts.paths import relative_path
from tgdl.contracts.subjects import Names
from tgdl.downloader.app import serve
from tgdl.downloader.files import part_path
from tgdl.downloader.settings import DownloaderSettings
from tgdl.downloader.telegram.port import PART_SIZE
from tgdl.downloader.telegram.simulated import SimulatedTelegram
from tgdl.simtelegram import client as sim_client
from tgdl.simtelegram.content import expected_sha256
from tgdl.simtelegram.settings import SimSettings

# Slow enough that a download is still running while the test looks at it.
SIM = SimSettings(bandwidth=1_000_000, latency=0.0, count=30, min_size=300_000,
                  max_size=1_500_000)


@dataclass
class Downloader:
    settings: DownloaderSettings
    names: Names
    js: object
    leases: Leases
    entries: list[CatalogEntry]
    outcomes: list[DownloadOutcome]
    stop: asyncio.Event
    task: asyncio.Task | None = None

    async def queue(self, entry: CatalogEntry, job_id: str, party: str = "b1",
                    chat_names: tuple[str, ...] = ()) -> None:
        """What the orchestrator does: take the lease, then queue the job."""
        await self.leases.acquire(entry.message_id, job_id, party)
        job = DownloadJob(job_id=job_id, entry=entry, chat_names=chat_names)
        await self.publish(job.model_dump_json().encode(), job_id)

    async def publish(self, body: bytes, msg_id: str) -> None:
        await self.js.publish(self.names.download_jobs, body, stream=self.names.jobs_stream,
                              headers={"Nats-Msg-Id": msg_id})

    async def outcome(self, job_id: str, within: float = 20.0) -> DownloadOutcome:
        return await until(lambda: next((o for o in self.outcomes if o.job_id == job_id), None),
                           within, what=f"outcome of {job_id}")

    async def queued(self) -> int:
        return (await self.js.stream_info(self.names.jobs_stream)).state.messages

    async def consumer(self):
        return await self.js.consumer_info(self.names.jobs_stream, self.names.downloader_consumer)

    def start(self, port=None, **overrides) -> None:
        settings = self.settings.model_copy(update=overrides)
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(serve(settings, self.stop, port=port))

    async def halt(self) -> None:
        self.stop.set()
        if self.task is not None:
            await self.task
            self.task = None

    def healthy(self, n: int) -> list[CatalogEntry]:
        return [e for e in self.entries if e.media_kind and e.chat == "sim_demo"][:n]


@pytest.fixture
async def downloader(servers, isolation, nc) -> AsyncIterator[Downloader]:
    async with running_sim(SIM) as sim_url:
        settings = DownloaderSettings(
            nats_url=servers.nats_url, namespace=isolation.namespace,
            media_root=isolation.media_root, sim_url=sim_url, ack_wait=2.0, slots=2,
            retry_base_delay=0.1, max_deliver=4,
        )
        names = settings.names
        js = nc.jetstream()
        await ensure_topology(js, names, QueuePolicy.of(settings))
        outcomes: list[DownloadOutcome] = []

        async def on_done(msg) -> None:
            outcomes.append(DownloadOutcome.model_validate_json(msg.data))
        sub = await nc.subscribe(names.all_file_done, cb=on_done)
        d = Downloader(settings, names, js, await Leases.open(js, names),
                       await sim_client.fetch_catalog(sim_url), outcomes, asyncio.Event())
        try:
            yield d
        finally:
            await d.halt()
            await sub.unsubscribe()


def sha_of(d: Downloader, entry: CatalogEntry) -> str:
    return hashlib.sha256((d.settings.media_root / relative_path(entry)).read_bytes()).hexdigest()


async def test_a_job_is_downloaded_and_its_outcome_handed_to_the_waiting_parties(downloader):
    d = downloader
    [entry] = d.healthy(1)
    d.start()
    await d.queue(entry, "b1:1")
    done = await d.outcome("b1:1")
    assert done.status == "completed" and done.parties == ["b1"] and done.failure is None
    assert sha_of(d, entry) == expected_sha256(entry.message_id, entry.size)
    assert done.hash_verified  # every part matched the simulated Telegram's range hashes
    assert await until(lambda: _is_none(d.leases.get(entry.message_id)), what="lease released")
    assert await until(lambda: _eq(d.queued(), 0), what="job acknowledged")


async def test_a_file_of_one_part_sends_no_progress_and_a_longer_one_does(downloader, nc):
    d = downloader
    small = next(e for e in d.healthy(30) if e.size < PART_SIZE)
    large = next(e for e in d.healthy(30) if e.size > PART_SIZE)
    progress: list[DownloadProgress] = []

    async def on_progress(msg) -> None:
        progress.append(DownloadProgress.model_validate_json(msg.data))
    sub = await nc.subscribe(d.names.all_file_progress, cb=on_progress)
    try:
        d.start()
        await d.queue(small, "b1:small")
        await d.queue(large, "b1:large")
        assert (await d.outcome("b1:small")).status == "completed"
        assert (await d.outcome("b1:large")).status == "completed"
        await nc.flush()
    finally:
        await sub.unsubscribe()
    # Progress goes out before the outcome on the same connection: none came for the
    # small file, and the large one's last says it is whole.
    assert not [p for p in progress if p.message_id == small.message_id]
    last = [p for p in progress if p.message_id == large.message_id][-1]
    assert last.downloaded_size == last.total_size == large.size


async def _is_none(awaitable) -> bool:
    return await awaitable is None


async def _eq(awaitable, value) -> bool:
    return await awaitable == value


async def test_a_malformed_job_is_terminated_not_redelivered(downloader):
    d = downloader
    d.start()
    await d.publish(b'{"job_id": "broken"}', "broken")
    assert await until(lambda: _eq(d.queued(), 0), 5, what="malformed job removed")
    assert (await d.consumer()).num_redelivered == 0
    assert d.outcomes == []


class FailsOnce(SimulatedTelegram):
    """A bug in the adapter on the first attempt: an exception the worker knows nothing of."""

    failed = 0

    async def resolve(self, entry):
        if not self.failed:
            self.failed += 1
            raise RuntimeError("unexpected bug")
        return await super().resolve(entry)


async def test_a_job_whose_handling_raises_goes_back_to_the_queue(downloader):
    d = downloader
    [entry] = d.healthy(1)
    port = FailsOnce(d.settings.sim_url)
    d.start(port=port)
    await d.queue(entry, "b1:1")
    done = await d.outcome("b1:1")
    assert port.failed == 1 and done.status == "completed"


async def test_a_job_is_fetched_only_when_a_slot_is_free(downloader):
    d = downloader
    entries = d.healthy(3)
    d.start(slots=1)
    for i, e in enumerate(entries):
        await d.queue(e, f"b1:{i}")
    seen = 0
    while len(d.outcomes) < 3:
        seen = max(seen, (await d.consumer()).num_ack_pending)
        await asyncio.sleep(0.02)
        assert d.task is not None and not d.task.done()
    assert seen == 1  # never a second job held (and its ack_wait running) while one works
    assert (await d.consumer()).num_redelivered == 0
    for e in entries:
        assert sha_of(d, e) == expected_sha256(e.message_id, e.size)


async def downloading_the_largest(d: Downloader) -> tuple[CatalogEntry, Path]:
    """Queue job b1:1 for the largest file; return once some of it is in its .part file."""
    entry = max(d.healthy(10), key=lambda e: e.size or 0)
    final = d.settings.media_root / relative_path(entry)
    d.start()
    await d.queue(entry, "b1:1")

    def partial() -> bool:
        with contextlib.suppress(FileNotFoundError):
            return part_path(final).stat().st_size > 0
        return False
    await until(partial, 10, what="download under way")
    return entry, final


async def test_shutdown_gives_the_running_job_back_at_once_and_keeps_its_part(downloader):
    d = downloader
    entry, final = await downloading_the_largest(d)
    async with asyncio.timeout(3):
        await d.halt()
    assert part_path(final).exists() and not final.exists()
    # Back on the queue now, not after ack_wait: another puller gets it at once.
    puller = await d.js.pull_subscribe_bind(d.names.downloader_consumer,
                                            stream=d.names.jobs_stream)
    [again] = await puller.fetch(1, timeout=d.settings.ack_wait / 2)
    assert DownloadJob.model_validate_json(again.data).job_id == "b1:1"
    await again.nak()
    await puller.unsubscribe()
    d.start()  # another replica resumes it from the .part
    done = await d.outcome("b1:1")
    assert done.status == "completed"
    assert sha_of(d, entry) == expected_sha256(entry.message_id, entry.size)


async def test_a_cancelled_lease_stops_the_download_and_removes_its_part(downloader):
    d = downloader
    entry, final = await downloading_the_largest(d)
    await d.leases.leave(entry.message_id, "b1")
    done = await d.outcome("b1:1")
    assert done.status == "cancelled" and done.failure is not None
    assert not part_path(final).exists() and not final.exists()


async def test_a_corrupted_range_is_refetched_and_a_persistent_one_fails_the_file(downloader):
    d = downloader
    once, always = d.healthy(2)
    await sim_client.set_faults(d.settings.sim_url, corrupt=[
        {"message_id": once.message_id, "offset": 0},
        {"message_id": always.message_id, "offset": 0, "times": 10}])
    d.start()
    await d.queue(once, "b1:1")
    await d.queue(always, "b1:2")

    fixed = await d.outcome("b1:1")
    assert fixed.status == "completed" and fixed.hash_verified
    assert fixed.parts_refetched == 1  # counted, and said in the outcome
    assert sha_of(d, once) == expected_sha256(once.message_id, once.size)
    failed = await d.outcome("b1:2")
    assert failed.status == "failed" and failed.hash_verified is None
    assert "SHA-256" in failed.failure.detail
    assert not (d.settings.media_root / relative_path(always)).exists()


async def test_a_second_copy_of_a_job_running_here_is_acked_and_the_first_completes(
        downloader):
    d = downloader  # ack_wait 2 s, max_deliver 4: an unanswered copy fails the job in 8 s
    [entry] = d.healthy(1)
    await sim_client.set_faults(d.settings.sim_url, slow={
        "message_id": entry.message_id, "bandwidth": 50_000, "times": 100})
    d.start()
    await d.queue(entry, "b1:twice")
    await until(lambda: _claimed(d, entry), 10, what="the first copy running")
    # a second copy of the same job, as a re-queue racing an admission can leave
    await d.publish(DownloadJob(job_id="b1:twice", entry=entry).model_dump_json().encode(),
                    "b1:twice:again")

    async def only_the_running_copy_left():
        info = await d.consumer()  # acked, a job leaves the work queue
        return info.num_pending == 0 and info.num_redelivered == 0 and await d.queued() == 1
    await until(only_the_running_copy_left, 10, what="the second copy acked")
    await sim_client.clear_faults(d.settings.sim_url)  # the first copy may finish now
    done = await d.outcome("b1:twice", within=60)
    assert done.status == "completed"
    assert sha_of(d, entry) == expected_sha256(entry.message_id, entry.size)
    assert [o.job_id for o in d.outcomes] == ["b1:twice"]  # one outcome, no failure
    assert await d.queued() == 0


async def _claimed(d: Downloader, entry: CatalogEntry) -> bool:
    held = await d.leases.get(entry.message_id)
    return held is not None and held[0].claimed_by is not None


async def test_a_failing_download_is_retried_later_each_time_then_fails(downloader, caplog):
    d = downloader  # retry_base_delay 0.1 s, max_deliver 4
    [entry] = d.healthy(1)
    await sim_client.set_faults(d.settings.sim_url, drop={
        "message_id": entry.message_id, "after_bytes": 0, "times": 100})
    caplog.set_level(logging.INFO, logger="tgdl.downloader")
    d.start(retry_max_delay=0.3)
    await d.queue(entry, "b1:dropped")
    done = await d.outcome("b1:dropped")
    assert done.status == "failed" and done.failure.error == "retries_exhausted"
    assert "gave up after 4 attempts" in done.failure.detail
    # each delivery waits longer before the next, up to the maximum
    delays = [float(m) for r in caplog.records
              for m in re.findall(r"b1:dropped: .*; retrying in ([\d.]+) s", r.getMessage())]
    assert delays == [0.1, 0.2, 0.3]


async def test_a_job_of_a_chat_outside_the_allow_list_is_refused_unfetched(downloader):
    d = downloader
    [entry] = d.healthy(1)
    d.start(allowed_chats="some_other_chat")
    await d.queue(entry, "b1:foreign")
    done = await d.outcome("b1:foreign")
    assert done.status == "failed" and done.failure.error == "access_denied"
    assert not (d.settings.media_root / relative_path(entry)).exists()


async def test_a_job_naming_its_chat_by_an_allowed_name_is_fetched(downloader):
    d = downloader
    [entry, other] = d.healthy(2)
    d.start(allowed_chats="-1001234")  # the chat by its id; the catalog lists a username
    await d.queue(entry, "b1:alias", chat_names=("-1001234",))
    await d.queue(other, "b1:elsewhere", chat_names=("-1009999",))
    done = await d.outcome("b1:alias")
    assert done.status == "completed"
    assert sha_of(d, entry) == expected_sha256(entry.message_id, entry.size)
    refused = await d.outcome("b1:elsewhere")
    assert refused.status == "failed" and refused.failure.error == "access_denied"


async def test_no_room_on_the_disk_fails_the_file_with_the_numbers(downloader):
    d = downloader
    [entry] = d.healthy(1)
    d.start(min_free_bytes=2**62)  # more than any disk here has free
    await d.queue(entry, "b1:full")
    done = await d.outcome("b1:full")
    assert done.status == "failed" and done.failure.error == "storage_error"
    assert "bytes free" in done.failure.detail and str(2**62) in done.failure.detail
    assert not list(d.settings.media_root.rglob("*.part"))  # nothing was started


async def test_the_files_record_names_a_finished_file_and_none_is_left_by_a_job_not_run(
        downloader):
    """The file's record is claimed beside the lease; a job that turns out not to run (it
    was cancelled while queued) must not leave it behind, or a forward of the same file
    would wait for a download that never happens."""
    d = downloader
    records = await FileRecords.open(d.js, d.names)
    done_entry, skipped = d.healthy(2)
    d.start()
    await d.queue(done_entry, "b1:1")
    assert (await d.outcome("b1:1")).status == "completed"
    record = await until(lambda: records.get(done_entry.location.file_key),
                         what="the finished file's record")
    assert record[0].relative_path == str(relative_path(done_entry))
    await d.leases.acquire(skipped.message_id, "b1:2", "b1")
    await d.leases.leave(skipped.message_id, "b1")  # cancelled before a replica took it
    await d.publish(DownloadJob(job_id="b1:2", entry=skipped).model_dump_json().encode(),
                    "b1:2")
    assert (await d.outcome("b1:2")).status == "cancelled"
    assert await until(lambda: _is_none(records.get(skipped.location.file_key)),
                       what="no record left for the file that was not fetched")


class Recording(SimulatedTelegram):
    """The simulated Telegram as one replica sees it: the messages it asked parts of;
    the parts of message `held` wait until `release` is set."""

    def __init__(self, base_url: str, held: int | None = None, **options) -> None:
        super().__init__(base_url, **options)
        self.asked: set[int] = set()
        self.held = held
        self.release = asyncio.Event()

    @contextlib.asynccontextmanager
    async def _range(self, media, offset, length):
        self.asked.add(media.entry.message_id)
        if media.entry.message_id == self.held:
            await self.release.wait()
        async with super()._range(media, offset, length) as response:
            yield response


async def test_a_replica_whose_connections_are_full_leaves_the_next_job_to_another(downloader):
    d = downloader
    large = next(e for e in d.healthy(30) if e.size > PART_SIZE)  # 2 parts: 2 requests
    small = next(e for e in d.healthy(30) if e.size < PART_SIZE)
    # One connection carrying 2 requests: the large file fills it; 4 slots stay free. The
    # first replica would take the next job anyway after its patience: longer than this
    # test.
    pool = {"connections_per_dc": 1, "requests_per_connection": 2, "slots": 4,
            "room_patience": 60.0}
    first = Recording(d.settings.sim_url, held=large.message_id, connections=1)
    d.start(port=first, **pool)
    await d.queue(large, "b1:large")
    await until(lambda: large.message_id in first.asked, what="the large file asked for")
    await d.queue(small, "b1:small")
    second = Recording(d.settings.sim_url, connections=1)
    stop_second = asyncio.Event()
    settings = d.settings.model_copy(update={"replica": "downloader-2", **pool})
    serving = asyncio.create_task(serve(settings, stop_second, port=second))
    try:
        # Queued while the first replica had free slots but no free request: the second
        # replica, started after, takes it.
        assert (await d.outcome("b1:small")).status == "completed"
        assert small.message_id in second.asked and small.message_id not in first.asked
    finally:
        first.release.set()
        stop_second.set()
        await serving
    assert (await d.outcome("b1:large")).status == "completed"
    assert sha_of(d, large) == expected_sha256(large.message_id, large.size)


async def test_a_lone_replica_whose_connections_are_full_still_takes_a_small_file(downloader):
    """No other replica has room: after its patience the replica takes the next job
    anyway, so a small file does not wait for a large one to end."""
    d = downloader
    large = next(e for e in d.healthy(30) if e.size > PART_SIZE)
    small = next(e for e in d.healthy(30) if e.size < PART_SIZE)
    only = Recording(d.settings.sim_url, held=large.message_id, connections=1)
    d.start(port=only, connections_per_dc=1, requests_per_connection=2, slots=4,
            room_patience=0.2)
    await d.queue(large, "b1:large")
    await until(lambda: large.message_id in only.asked, what="the large file asked for")
    await d.queue(small, "b1:small")
    try:
        assert (await d.outcome("b1:small")).status == "completed"  # the large one held
    finally:
        only.release.set()
    assert (await d.outcome("b1:large")).status == "completed"
