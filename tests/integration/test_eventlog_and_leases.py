"""The event log's optimistic concurrency and the leases' compare-and-set, on real NATS."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tgdl.bus.eventlog import ConcurrentAppend, EventLog
from tgdl.bus.leases import Leases, Rejoined
from tgdl.bus.topology import QueuePolicy, ensure_topology
from tgdl.contracts.events import (
    BatchCancelled,
    BatchFinished,
    FileCompleted,
    PermitGranted,
    dump_event,
    types_in,
)
from tgdl.contracts.jobs import DownloadOutcome
from tgdl.contracts.subjects import Names

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
async def js(nc, isolation):
    js = nc.jetstream()
    await ensure_topology(js, Names(isolation.namespace), QueuePolicy())
    return js


async def test_append_rejects_a_stale_expected_sequence(js, isolation):
    log = EventLog(js, Names(isolation.namespace))
    first = PermitGranted(batch_id="b1", at=NOW, message_id=1, job_id="b1:1")
    seq = await log.append("b1", [first], expected_last_seq=0)
    # another writer appends to another batch: b1's expectation must still hold
    await log.append("b2", [first.model_copy(update={"batch_id": "b2"})], 0)
    seq = await log.append("b1", [first.model_copy(update={"message_id": 2})], seq)
    with pytest.raises(ConcurrentAppend):
        await log.append("b1", [BatchCancelled(batch_id="b1", at=NOW, stopped=[])], seq - 2)
    with pytest.raises(ConcurrentAppend):
        await log.append("b1", [first], expected_last_seq=0)  # "new batch" but it exists
    events, last = await log.load("b1")
    assert [e.message_id for e in events] == [1, 2]
    assert last == seq
    assert await log.load("missing") == ([], 0)


async def test_one_decision_is_one_message_read_back_in_order(js, isolation):
    names = Names(isolation.namespace)
    log = EventLog(js, names)
    granted = PermitGranted(batch_id="b", at=NOW, message_id=1, job_id="b:1")
    seq = await log.append("b", [granted], 0)
    decision = [
        FileCompleted(batch_id="b", at=NOW, message_id=1, job_id="b:1", file_path="/m/1",
                      relative_path="1", size=3),
        granted.model_copy(update={"message_id": 2, "job_id": "b:2"}),
        BatchFinished(batch_id="b", at=NOW, overall_status="completed", completed=1,
                      failed=0),
    ]
    last = await log.append("b", decision, seq)

    assert last == seq + 1  # one publish (one fsync, one round trip) for the decision
    stored = await js.get_last_msg(names.events_stream, names.batch_events("b"))
    assert types_in(stored.headers) == ["FileCompleted", "PermitGranted", "BatchFinished"]
    # a log written one event per message by an older release reads on after it
    old = await js.publish(names.batch_events("b"), dump_event(
        BatchCancelled(batch_id="b", at=NOW, stopped=[])), stream=names.events_stream)
    events, at = await log.load("b")
    assert events == [granted, *decision, BatchCancelled(batch_id="b", at=NOW, stopped=[])]
    assert at == old.seq
    # and a decision is checked against the log as a whole: appended by nobody else
    with pytest.raises(ConcurrentAppend):
        await log.append("b", decision, last)
    assert (await log.load("b"))[0] == events


async def test_one_lease_per_message_and_every_party_is_told(js, isolation):
    leases = await Leases.open(js, Names(isolation.namespace))
    a = await leases.acquire(7, "A:7", "A")
    b = await leases.acquire(7, "B:7", "B")
    assert (a.job_id, a.attached) == ("A:7", False)
    assert (b.job_id, b.attached) == ("A:7", True)
    left = await leases.leave(7, "A")
    assert left is not None and left.parties == ["B"]
    ended = DownloadOutcome(job_id="A:7", message_id=7, status="completed", at=NOW)
    assert await leases.end(ended.model_copy(update={"job_id": "B:7"})) is None  # stale
    assert (await leases.end(ended)).parties == ["B"]
    assert (await leases.end(ended)).parties == ["B"]  # a redelivered job finds it again
    assert await leases.leave(7, "B") is not None  # an ended job's parties are frozen
    assert (await leases.get(7))[0].parties == ["B"]
    await leases.release(7, "A:7")
    assert await leases.get(7) is None
    c = await leases.acquire(7, "C:7", "C")  # free again after release
    assert (c.job_id, c.attached) == ("C:7", False)


async def test_a_party_that_paused_is_told_only_of_a_completed_file(js, isolation):
    leases = await Leases.open(js, Names(isolation.namespace))
    for m, status, told in ((4, "completed", ["B", "A"]), (6, "failed", ["B"])):
        await leases.acquire(m, f"A:{m}", "A")
        await leases.acquire(m, f"B:{m}", "B")
        left = await leases.leave(m, "A", keep_part=True)  # A paused
        assert left.parties == ["B"] and left.paused == ["A"] and left.keep_part
        ended = DownloadOutcome(job_id=f"A:{m}", message_id=m, status=status, at=NOW)
        # the file is whole: A records it completed, not paused; a failure is B's news
        assert (await leases.end(ended)).parties == told
    await leases.acquire(2, "A:2", "A")
    await leases.leave(2, "A")  # a cancel, not a pause: nothing more to hear
    assert (await leases.get(2))[0].paused == []


async def test_a_forcing_party_makes_the_shared_job_fetch_again(js, isolation):
    leases = await Leases.open(js, Names(isolation.namespace))
    await leases.acquire(3, "A:3", "A")
    assert (await leases.get(3))[0].force is False
    joined = await leases.acquire(3, "B:3", "B", force=True)
    assert joined.attached and joined.job_id == "A:3"
    lease, _ = await leases.get(3)
    assert lease.force is True and lease.parties == ["A", "B"]
    await leases.acquire(3, "C:3", "C")  # a later party without force keeps it forced
    assert (await leases.get(3))[0].force is True


async def test_a_lease_is_claimed_by_one_copy_of_its_job(js, isolation):
    leases = await Leases.open(js, Names(isolation.namespace))
    await leases.acquire(8, "A:8", "A")
    assert await leases.claim(8, "A:8", job_seq=41)
    assert await leases.claim(8, "A:8", job_seq=41)  # its own redelivery
    assert not await leases.claim(8, "A:8", job_seq=42)  # a second copy of the job
    assert not await leases.claim(8, "B:8", job_seq=41)  # another job altogether
    assert not await leases.claim(9, "A:9", job_seq=1)  # no lease at all


async def test_release_with_the_revision_end_left_and_with_a_stale_one(js, isolation):
    leases = await Leases.open(js, Names(isolation.namespace))
    ended = DownloadOutcome(job_id="A:5", message_id=5, status="completed", at=NOW)
    await leases.acquire(5, "A:5", "A")
    addressed, revision = await leases.end_at(ended)
    assert addressed.parties == ["A"] and revision == (await leases.get(5))[1]
    await leases.release(5, "A:5", revision)  # no read needed
    assert await leases.get(5) is None
    # a stale revision reads the lease again, and never deletes another job's lease
    await leases.acquire(5, "B:5", "B")
    await leases.release(5, "A:5", revision)
    assert (await leases.get(5))[0].job_id == "B:5"


async def test_claim_and_end_write_against_the_lease_seen_and_a_stale_one_reads_again(
    js, isolation
):
    leases = await Leases.open(js, Names(isolation.namespace))
    await leases.acquire(6, "A:6", "A")
    seen = await leases.get(6)
    claimed = await leases.claim_at(6, "A:6", 50, seen)  # no read: the lease just read
    assert claimed is not None and claimed[0].claimed_by == 50
    assert claimed[1] == (await leases.get(6))[1]
    await leases.acquire(6, "B:6", "B")  # joins while it downloads: `claimed` is stale now
    ended = DownloadOutcome(job_id="A:6", message_id=6, status="completed", at=NOW)
    addressed, revision = await leases.end_at(ended, claimed)
    assert addressed.parties == ["A", "B"]  # the stale write failed, the fresh one told B
    assert revision == (await leases.get(6))[1]
    # a cancel never trusts what was seen: a party that came back must be found
    await leases.release(6, "A:6", revision)
    await leases.acquire(6, "C:6", "C")
    seen = await leases.claim_at(6, "C:6", 51)
    await leases.leave(6, "C")
    await leases.acquire(6, "D:6", "C")  # the same party is back
    cancelled = ended.model_copy(update={"job_id": "C:6", "status": "cancelled"})
    with pytest.raises(Rejoined):
        await leases.end_at(cancelled, (seen[0].model_copy(update={"parties": []}), seen[1]))


async def test_a_claim_never_gives_up_on_a_stale_sighting(js, isolation):
    leases = await Leases.open(js, Names(isolation.namespace))
    await leases.acquire(4, "A:4", "A")
    old = await leases.claim_at(4, "A:4", 60)  # the job's earlier incarnation ran...
    ended = DownloadOutcome(job_id="A:4", message_id=4, status="completed", at=NOW)
    await leases.release(4, "A:4", (await leases.end_at(ended))[1])
    await leases.acquire(4, "A:4", "A")  # ...and the same job was queued again
    # A sighting of the old lease (claimed by another copy) is checked, not believed.
    claimed = await leases.claim_at(4, "A:4", 61, old)
    assert claimed is not None and claimed[0].claimed_by == 61
    assert claimed[1] == (await leases.get(4))[1]
