"""The waiting room in front of the job queue, on real NATS: jobs enter the queue only
while it has room under the global cap, best priority first, and a job waiting moves
when its priority changes (tgdl.bus.admission)."""

from __future__ import annotations

import pytest
from nats.js.errors import NotFoundError

from tgdl.bus.admission import Admission
from tgdl.bus.jobs import JetStreamPublisher, JobLifecycle
from tgdl.bus.leases import Leases
from tgdl.bus.topology import QueuePolicy, ensure_topology
from tgdl.contracts.catalog import CatalogEntry, MediaKind
from tgdl.contracts.jobs import DownloadJob
from tgdl.contracts.status import Priority
from tgdl.contracts.subjects import Names

CAP = 2


@pytest.fixture
async def room(nc, isolation):
    js = nc.jetstream()
    names = Names(isolation.namespace)
    await ensure_topology(js, names, QueuePolicy(global_cap=CAP))
    puller = await js.pull_subscribe_bind(names.downloader_consumer, stream=names.jobs_stream)
    return js, names, Admission(js, names, aging=3600), puller


def job(m: int, priority: str) -> DownloadJob:
    entry = CatalogEntry(message_id=m, chat="c", telegram_message_id=m,
                         media_kind=MediaKind.document, file_name=f"{m}.bin", size=10)
    return DownloadJob(job_id=f"b{m}:{m}", entry=entry, priority=Priority(priority))


async def queued_ids(js, names) -> list[int]:
    info = await js.stream_info(names.jobs_stream)
    ids = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            raw = await js.get_msg(names.jobs_stream, seq)
        except NotFoundError:  # taken and acknowledged
            continue
        ids.append(DownloadJob.model_validate_json(raw.data).entry.message_id)
    return ids


async def test_only_the_room_under_the_cap_is_admitted_best_first(room):
    js, names, admission, puller = room
    for m, p in ((1, "low"), (2, "low"), (3, "normal"), (4, "high"), (5, "low")):
        await admission.enqueue(job(m, p))
    await admission.admit()
    assert await queued_ids(js, names) == [4, 3]  # the cap's worth, best first
    (running,) = await puller.fetch(1, timeout=2)  # a downloader takes one: still no room
    await admission.admit()
    assert await queued_ids(js, names) == [4, 3]
    await running.ack_sync()  # it ended: one slot
    await admission.admit()
    assert await queued_ids(js, names) == [3, 1]
    assert (await js.stream_info(names.waiting_stream)).state.messages == 2


async def test_a_waiting_job_moves_with_its_priority_and_a_started_one_does_not(room):
    js, names, admission, _ = room
    await admission.enqueue(job(1, "high"))
    await admission.enqueue(job(2, "high"))
    await admission.admit()  # 1 and 2 fill the cap
    for m in (3, 4):
        await admission.enqueue(job(m, "normal"))
    await admission.enqueue(job(5, "low"))
    assert await admission.reprioritize([1, 5], Priority.high) == [5]  # 1 is in the queue
    assert await admission.reprioritize([3], Priority.low, raise_only=True) == []
    assert await admission.reprioritize([3], Priority.low) == [3]
    waiting = (await js.stream_info(names.waiting_stream)).state
    assert waiting.messages == 3  # moved, not copied
    await js.purge_stream(names.jobs_stream)  # both ended
    await admission.admit()
    queued = await queued_ids(js, names)
    assert queued[-2:] == [5, 4]
    moved = DownloadJob.model_validate_json(
        (await js.get_msg(names.jobs_stream, (await js.stream_info(names.jobs_stream))
                          .state.last_seq - 1)).data)
    assert moved.priority == Priority.high and moved.job_id == "b5:5"


async def test_a_job_queued_twice_enters_the_queue_once(room):
    js, names, admission, _ = room
    await admission.enqueue(job(1, "normal"))
    await admission.enqueue(job(1, "normal"))  # a retried dispatch: same job id
    await admission.admit()
    assert await queued_ids(js, names) == [1]


async def test_a_job_skips_the_waiting_room_only_when_nobody_waits_and_there_is_room(room):
    js, names, admission, _ = room
    jobs = JobLifecycle(await Leases.open(js, names), JetStreamPublisher(js), names, admission)
    await jobs.publish_job(job(1, "low"))  # room, nobody waiting: straight in
    await jobs.publish_job(job(2, "low"))
    assert await queued_ids(js, names) == [1, 2]
    assert (await js.stream_info(names.waiting_stream)).state.last_seq == 0  # never used
    await jobs.publish_job(job(3, "low"))  # the cap is full: it waits
    assert await queued_ids(js, names) == [1, 2]
    await js.purge_stream(names.jobs_stream)  # both ended: room again, but 3 waits
    await jobs.publish_job(job(4, "high"))  # so 4 goes through the waiting room, best first
    assert await queued_ids(js, names) == [4, 3]
