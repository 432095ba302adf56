"""The orchestrator's handlers over in-memory fakes of its ports: start, outcomes, cancel,
recovery after a crash, the sweep of stalled dispatches and the give-up path.

The fakes (`tgdl.orchestrator.ports`: event log, job lifecycle with its leases and queue,
open-batches index, catalog, clock) keep the contracts that matter (expected-sequence
appends, one lease per message, deduplicated jobs), so these tests run the real decider,
repository and executor in milliseconds. The same code runs over real NATS in
tests/integration/test_orchestrator_recovery.py and test_pipeline.py."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tgdl.bus.eventlog import ConcurrentAppend
from tgdl.bus.leases import Acquired, addressees, without
from tgdl.contracts.catalog import CatalogEntry, MediaKind
from tgdl.contracts.commands import (
    BatchAccepted,
    BatchCancelOutcome,
    BatchPauseOutcome,
    BatchResumeOutcome,
    CancelBatch,
    CancelSingle,
    ConcurrencyOutcome,
    PauseBatch,
    PriorityOutcome,
    Rejection,
    RejectReason,
    ResumeBatch,
    SetConcurrency,
    SetPriority,
    StartBatch,
)
from tgdl.contracts.errors import ErrorCode
from tgdl.contracts.events import (
    BatchCancelled,
    BatchEvent,
    BatchFinished,
    BatchPaused,
    BatchStarted,
    FileCompleted,
    FileFailed,
    JobDispatched,
    PermitGranted,
)
from tgdl.contracts.jobs import DownloadJob, DownloadOutcome, Lease
from tgdl.contracts.status import BatchKind, OutcomeStatus, Priority
from tgdl.orchestrator.batch import fold
from tgdl.orchestrator.handlers import Orchestrator
from tgdl.orchestrator.ports import Ports
from tgdl.orchestrator.react import Dispatch, LeaveLease, plan_recovery, react
from tgdl.orchestrator.settings import OrchestratorSettings

START = datetime(2026, 1, 1, tzinfo=UTC)


def entry(m: int) -> CatalogEntry:
    return CatalogEntry(message_id=m, chat="c", telegram_message_id=100 + m,
                        media_kind=MediaKind.photo, file_name=f"{m}.jpg", size=1000)


class FakeClock:
    def __init__(self) -> None:
        self.at = START

    def now(self) -> datetime:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


class FakeLog:
    """One stream of events; each batch is a subject with expected-sequence appends."""

    def __init__(self) -> None:
        self.seq = 0
        self.subjects: dict[str, list[tuple[int, BatchEvent]]] = {}

    def events(self, batch_id: str) -> list[BatchEvent]:
        return [e for _, e in self.subjects.get(batch_id, [])]

    def of_type(self, batch_id: str, kind: type) -> list:
        return [e for e in self.events(batch_id) if isinstance(e, kind)]

    async def append(self, batch_id: str, events: Sequence[BatchEvent],
                     expected_last_seq: int) -> int:
        if await self.last_seq(batch_id) != expected_last_seq:
            raise ConcurrentAppend(batch_id)
        for event in events:
            self.seq += 1
            self.subjects.setdefault(batch_id, []).append((self.seq, event))
        return self.seq

    async def last_seq(self, batch_id: str) -> int:
        stored = self.subjects.get(batch_id)
        return stored[-1][0] if stored else 0

    async def load(self, batch_id: str) -> tuple[list[BatchEvent], int]:
        return self.events(batch_id), await self.last_seq(batch_id)


class FakeLeases:
    def __init__(self) -> None:
        self.leases: dict[int, Lease] = {}

    async def get(self, message_id: int) -> tuple[Lease, int] | None:
        lease = self.leases.get(message_id)
        return (lease, 1) if lease else None

    async def leave(self, message_id: int, party: str, keep_part: bool = False) -> Lease | None:
        lease = self.leases.get(message_id)
        if lease is None:
            return None
        left = without(lease, party, keep_part)
        self.leases[message_id] = left
        return left


class FakeJobs:
    """The job lifecycle and the jobs work queue: jobs deduplicated by id, stored by
    sequence until a downloader (the test) ends them; `end` publishes to `outcomes`."""

    def __init__(self, leases: FakeLeases) -> None:
        self.leases = leases
        self.seq = 0
        self.queue: dict[int, DownloadJob] = {}  # stored job messages by stream sequence
        self.published: list[str] = []  # job ids, in publish order
        self.outcomes: list[DownloadOutcome] = []  # published, addressed outcomes
        self.unreachable = False  # NATS is down: publishing fails

    async def acquire(self, message_id: int, job_id: str, party: str,
                      force: bool = False) -> Acquired:
        lease = self.leases.leases.get(message_id)
        if lease is None:
            self.leases.leases[message_id] = Lease(job_id=job_id, parties=[party], force=force)
            return Acquired(job_id, attached=False)
        if party not in lease.parties:
            self.leases.leases[message_id] = lease.model_copy(
                update={"parties": [*lease.parties, party]})
        return Acquired(lease.job_id, attached=lease.job_id != job_id)

    async def publish_job(self, job: DownloadJob) -> None:
        if self.unreachable:
            raise ConnectionError("nats: no servers available")
        if job.job_id in self.published:
            return  # Nats-Msg-Id deduplicates
        self.seq += 1
        self.queue[self.seq] = job
        self.published.append(job.job_id)

    async def reprioritize(self, message_ids, priority, raise_only=False) -> None:
        for seq, job in self.queue.items():  # queued here means: not started
            if job.entry.message_id in message_ids and not (
                    raise_only and priority.rank >= job.priority.rank):
                self.queue[seq] = job.model_copy(update={"priority": priority})

    async def end(self, outcome: DownloadOutcome) -> DownloadOutcome | None:
        lease = self.leases.leases.get(outcome.message_id)
        if lease is None or lease.job_id != outcome.job_id:
            return None
        addressed = outcome.model_copy(update={"parties": addressees(lease, outcome)})
        self.outcomes.append(addressed)
        del self.leases.leases[outcome.message_id]
        return addressed

    # the work queue (`QueuedJobs`)
    async def get(self, seq: int) -> DownloadJob | None:
        return self.queue.get(seq)

    async def delete(self, seq: int) -> None:
        self.queue.pop(seq, None)

    def seq_of(self, job_id: str) -> int:
        return next(seq for seq, job in self.queue.items() if job.job_id == job_id)


class FakeOpenBatches:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.listed: dict[str, datetime] = {}

    async def add(self, batch_id: str) -> None:
        self.listed[batch_id] = self.clock.now()

    async def remove(self, batch_id: str) -> None:
        self.listed.pop(batch_id, None)

    async def list(self) -> list[str]:
        return sorted(self.listed)

    async def listed_for(self, batch_id: str) -> timedelta | None:
        added = self.listed.get(batch_id)
        return None if added is None else self.clock.now() - added


@dataclass
class FakeCatalog:
    entries: dict[int, CatalogEntry] = field(default_factory=dict)

    names: list[frozenset[str]] = field(default_factory=list)  # each chat's names

    async def get_many(self, ids: Sequence[int]) -> Mapping[int, CatalogEntry]:
        return {m: self.entries[m] for m in ids if m in self.entries}

    async def every_name(self, chats: frozenset[str]) -> frozenset[str]:
        return chats.union(*(n for n in self.names if n & chats))


@dataclass
class World:
    """An orchestrator over fakes, and the fakes to look at."""

    orch: Orchestrator
    log: FakeLog
    jobs: FakeJobs
    leases: FakeLeases
    open_batches: FakeOpenBatches
    clock: FakeClock

    def restarted(self) -> World:
        """A new orchestrator process over the same log, leases, queue and index."""
        return World(Orchestrator(self.orch.settings, self.orch.ports), self.log, self.jobs,
                     self.leases, self.open_batches, self.clock)

    async def end_job(self, job_id: str, status: OutcomeStatus = OutcomeStatus.completed,
                      deliver: bool = True) -> DownloadOutcome | None:
        """A downloader ends the job (and the outcome reaches the orchestrator)."""
        seq = self.jobs.seq_of(job_id)
        job = self.jobs.queue.pop(seq)
        m = job.entry.message_id
        done = status is OutcomeStatus.completed
        addressed = await self.jobs.end(DownloadOutcome(
            job_id=job_id, message_id=m, status=status, at=self.clock.now(),
            file_path=f"/media/{m}.jpg" if done else None,
            relative_path=f"{m}.jpg" if done else None, size=1000 if done else None))
        if addressed is not None and deliver:
            await self.orch.on_outcome(addressed)
        return addressed


def world(media_root: Path, ids: Sequence[int] = range(1, 11), **settings) -> World:
    clock = FakeClock()
    log, leases = FakeLog(), FakeLeases()
    jobs = FakeJobs(leases)
    index = FakeOpenBatches(clock)
    ports = Ports(log=log, jobs=jobs, leases=leases, queued_jobs=jobs, open_batches=index,
                  catalog=FakeCatalog({m: entry(m) for m in ids}), clock=clock)
    orch = Orchestrator(OrchestratorSettings(media_root=media_root, **settings), ports)
    return World(orch, log, jobs, leases, index, clock)


# --- tests -----------------------------------------------------------------------------------


@pytest.fixture
def w(tmp_path: Path) -> World:
    return world(tmp_path)


async def start(w: World, ids: list[int], max_concurrent: int = 2, **kw) -> str:
    accepted = await w.orch.start_batch(StartBatch(message_ids=ids,
                                                   max_concurrent=max_concurrent, **kw))
    assert isinstance(accepted, BatchAccepted), accepted
    return accepted.batch_id


def started(batch_id: str, ids: list[int], kind: BatchKind = BatchKind.batch,
            max_concurrent: int = 2) -> BatchStarted:
    return BatchStarted(batch_id=batch_id, at=START, kind=kind, max_concurrent=max_concurrent,
                        force=False, requested_ids=ids, to_download=[entry(m) for m in ids],
                        already_downloaded=[], failed_to_start=[])


def granted(batch_id: str, m: int) -> PermitGranted:
    return PermitGranted(batch_id=batch_id, at=START, message_id=m, job_id=f"{batch_id}:{m}")


def dispatched(batch_id: str, m: int) -> JobDispatched:
    return JobDispatched(batch_id=batch_id, at=START, message_id=m, job_id=f"{batch_id}:{m}",
                         attached=False)


# start and dispatch


async def test_start_dispatches_as_many_jobs_as_permits_and_lists_the_batch(w):
    accepted = await w.orch.start_batch(StartBatch(message_ids=[1, 2, 3, 99, 2],
                                                   max_concurrent=2))
    assert isinstance(accepted, BatchAccepted)
    b = accepted.batch_id
    assert accepted.requested_ids == [1, 2, 3, 99] and accepted.started == [1, 2, 3]
    assert [f.error for f in accepted.failed_to_start] == [ErrorCode.message_not_found]
    assert w.jobs.published == [f"{b}:1", f"{b}:2"]
    assert [e.message_id for e in w.log.of_type(b, JobDispatched)] == [1, 2]
    assert {m: lease.parties for m, lease in w.leases.leases.items()} == {1: [b], 2: [b]}
    assert await w.open_batches.list() == [b]


async def test_each_outcome_frees_a_permit_and_the_finished_batch_leaves_every_list(w):
    b = await start(w, [1, 2, 3])
    await w.end_job(f"{b}:1")
    assert w.jobs.published == [f"{b}:1", f"{b}:2", f"{b}:3"]
    await w.end_job(f"{b}:2", OutcomeStatus.failed)
    await w.end_job(f"{b}:3")
    [finished] = w.log.of_type(b, BatchFinished)
    assert (finished.completed, finished.failed, finished.overall_status) == (2, 1, "failed")
    assert await w.open_batches.list() == [] and w.leases.leases == {}
    assert w.orch.repo.open_batches() == [] and w.orch.repo.locks_held() == 0


async def test_a_second_request_for_a_message_joins_the_running_job(w):
    first = await start(w, [1])
    second = await start(w, [1], max_concurrent=1)
    assert w.jobs.published == [f"{first}:1"]  # one download for both
    [joined] = w.log.of_type(second, JobDispatched)
    assert joined.attached and joined.job_id == f"{first}:1"
    await w.end_job(f"{first}:1")
    for b in (first, second):
        assert [e.message_id for e in w.log.of_type(b, FileCompleted)] == [1]


async def test_too_many_ids_are_rejected_before_anything_is_written(tmp_path):
    w = world(tmp_path, max_batch_ids=3)
    rejected = await w.orch.start_batch(StartBatch(message_ids=[1, 2, 3, 4]))
    assert isinstance(rejected, Rejection) and rejected.reason is RejectReason.too_many_files
    assert w.log.subjects == {} and await w.open_batches.list() == []


# cancel


async def test_cancel_leaves_the_leases_of_running_files_and_unlists_the_batch(w):
    b = await start(w, [1, 2, 3])
    outcome = await w.orch.cancel_batch(CancelBatch(batch_id=b))
    assert outcome == BatchCancelOutcome(batch_id=b, total_files=3, stopped=[1, 2, 3],
                                         already_finished=False)
    assert [lease.parties for lease in w.leases.leases.values()] == [[], []]  # jobs stop
    assert await w.open_batches.list() == []
    again = await w.orch.cancel_batch(CancelBatch(batch_id=b))
    assert isinstance(again, BatchCancelOutcome) and again.already_finished


async def test_cancelling_an_unknown_batch_is_refused_and_leaves_nothing_in_memory(w):
    rejected = await w.orch.cancel_batch(CancelBatch(batch_id="batch_nothere"))
    assert isinstance(rejected, Rejection) and rejected.reason is RejectReason.batch_not_found
    assert w.orch.repo.locks_held() == 0 and w.orch.repo.open_batches() == []


async def test_cancel_single_takes_the_kind_from_the_batch_not_its_id(w):
    # ids are opaque: a single-file request under any id, a batch whose id looks single
    w.log.subjects.clear()
    for b, kind in (("odd_name", BatchKind.single), ("single_lookalike", BatchKind.batch)):
        await w.log.append(b, [started(b, [5], kind), granted(b, 5), dispatched(b, 5)], 0)
        await w.jobs.acquire(5, "odd_name:5", b)
    outcome = await w.orch.cancel_single(CancelSingle(message_id=5))
    assert outcome.cancelled == ["odd_name"]
    assert w.leases.leases[5].parties == ["single_lookalike"]  # the batch keeps its file
    assert w.log.of_type("single_lookalike", BatchCancelled) == []


async def test_cancel_single_finds_a_paused_request_though_the_pause_left_the_lease(w):
    single = await start(w, [5], max_concurrent=1, kind=BatchKind.single)
    other = await start(w, [6], max_concurrent=1, kind=BatchKind.single)
    await w.orch.pause_batch(PauseBatch(batch_id=single))
    assert w.leases.leases[5].parties == []  # only the open batches still know it
    outcome = await w.orch.cancel_single(CancelSingle(message_id=5))
    assert outcome.cancelled == [single]
    assert w.log.of_type(single, BatchCancelled) != []
    assert w.log.of_type(other, BatchCancelled) == []  # another message's request goes on


async def test_a_dispatch_overtaken_by_a_cancel_does_not_leave_the_batch_waiting(w):
    b = await start(w, [1], max_concurrent=1)
    # the cancel lands while a (second replica's) dispatch of file 1 is between steps
    await w.orch.cancel_batch(CancelBatch(batch_id=b))
    await w.orch.executor.carry_out([Dispatch(b, entry(1), f"{b}:1", False)])
    assert w.leases.leases[1].parties == []


# the give-up path


async def test_a_job_jetstream_gave_up_on_fails_with_worker_lost_through_the_lifecycle(w):
    b = await start(w, [7], max_concurrent=1)
    seq = w.jobs.seq_of(f"{b}:7")
    await w.orch.on_job_gave_up(seq)  # its downloaders kept dying
    [outcome] = w.jobs.outcomes  # ended through the shared lifecycle: addressed, released
    assert outcome.parties == [b] and outcome.failure.error is ErrorCode.worker_lost
    assert w.leases.leases == {} and w.jobs.queue == {}  # message free, job dropped
    await w.orch.on_outcome(outcome)  # as the outcomes consumer delivers it
    [failed] = w.log.of_type(b, FileFailed)
    assert failed.failure.error is ErrorCode.worker_lost and failed.failure.suggestion
    assert w.log.events(b)[-1].overall_status == "failed"
    await w.orch.on_job_gave_up(seq)  # a redelivered advisory changes nothing
    assert len(w.jobs.outcomes) == 1


# recovery after a crash


async def test_recovery_finishes_what_a_crash_interrupted(w):
    log, leases = w.log, w.leases
    # A crashed right after granting permits: no lease, no job, no JobDispatched.
    await log.append("a", [started("a", [1, 2, 3]), granted("a", 1), granted("a", 2)], 0)
    # B was cancelled, but the crash came before it left the lease of file 9.
    await log.append("b", [started("b", [9]), granted("b", 9), dispatched("b", 9),
                           BatchCancelled(batch_id="b", at=START, stopped=[9])], 0)
    await w.jobs.acquire(9, "b:9", "b")
    # C finished but was not unlisted; D and E never got their start appended.
    await log.append("c", [started("c", [1]), BatchFinished(
        batch_id="c", at=START, overall_status="completed", completed=0, failed=0)], 0)
    for b in ("a", "b", "c", "e"):
        await w.open_batches.add(b)
    w.clock.advance(120)
    await w.open_batches.add("d")  # young: it may still be starting

    after = w.restarted()
    assert await after.orch.recover() == 1
    assert w.jobs.published == ["a:1", "a:2"]
    assert [e.message_id for e in log.of_type("a", JobDispatched)] == [1, 2]
    assert leases.leases[1].parties == ["a"] and leases.leases[9].parties == []
    assert await w.open_batches.list() == ["a", "d"]
    assert [s.batch_id for s in after.orch.repo.open_batches()] == ["a"]


async def test_recovery_grants_free_permits_and_finishes_a_batch_whose_grant_was_lost(w):
    # the crash came between a file's completion and the next grant
    await w.log.append("a", [started("a", [1, 2], max_concurrent=1), granted("a", 1),
                             dispatched("a", 1), FileCompleted(
        batch_id="a", at=START, message_id=1, job_id="a:1", file_path="/m/1",
        relative_path="1", size=1)], 0)
    await w.open_batches.add("a")
    after = w.restarted()
    await after.orch.recover()
    assert w.jobs.published == ["a:2"]
    await after.end_job("a:2")
    assert isinstance(w.log.events("a")[-1], BatchFinished)
    assert await w.open_batches.list() == []


async def test_recovering_twice_publishes_nothing_twice(w):
    await w.log.append("a", [started("a", [1, 2]), granted("a", 1), granted("a", 2)], 0)
    await w.open_batches.add("a")
    await w.restarted().orch.recover()
    await w.restarted().orch.recover()
    assert w.jobs.published == ["a:1", "a:2"]
    assert len(w.log.of_type("a", JobDispatched)) == 2


# the sweep


async def test_the_sweep_redispatches_a_grant_stalled_on_two_sweeps_in_a_row(w):
    w.jobs.unreachable = True  # NATS hiccup: the grant is appended, its job is not
    with pytest.raises(ConnectionError):
        await start(w, [1], max_concurrent=1)
    [b] = w.log.subjects
    w.jobs.unreachable = False
    assert w.jobs.published == [] and w.log.of_type(b, JobDispatched) == []

    await w.orch.sweep()  # seen stalled once: it may be a dispatch still under way
    assert w.jobs.published == []
    await w.orch.sweep()
    assert w.jobs.published == [f"{b}:1"]
    assert [e.message_id for e in w.log.of_type(b, JobDispatched)] == [1]
    await w.orch.sweep()
    await w.orch.sweep()
    assert w.jobs.published == [f"{b}:1"]  # dispatched: nothing left to sweep


async def test_the_sweep_trusts_the_log_over_its_cache(w):
    w.jobs.unreachable = True
    with pytest.raises(ConnectionError):
        await start(w, [1], max_concurrent=1)
    [b] = w.log.subjects
    w.jobs.unreachable = False
    # another replica dispatched it meanwhile; this one's cache does not know
    await w.log.append(b, [dispatched(b, 1)], await w.log.last_seq(b))
    await w.orch.sweep()
    await w.orch.sweep()
    assert w.jobs.published == [] and len(w.log.of_type(b, JobDispatched)) == 1


async def test_a_start_on_an_id_another_replica_took_draws_a_new_id(w: World, monkeypatch):
    # another orchestrator replica already wrote batch_taken: a start that drew the same id
    # must not append a second BatchStarted to it, and must not lose the request either
    await w.log.append("batch_taken", [started("batch_taken", [7])], 0)
    drawn = iter(["batch_taken", "batch_fresh"])
    monkeypatch.setattr("tgdl.orchestrator.handlers.new_batch_id", lambda kind: next(drawn))
    batch_id = await start(w, [1])
    assert batch_id == "batch_fresh"
    assert len(w.log.of_type("batch_taken", BatchStarted)) == 1
    assert w.log.of_type("batch_taken", BatchStarted)[0].requested_ids == [7]
    assert [e.requested_ids for e in w.log.of_type("batch_fresh", BatchStarted)] == [[1]]


# steering: pause, resume, live max_concurrent


async def test_a_file_whose_job_completes_just_after_the_pause_is_completed_not_paused(w):
    b = await start(w, [1, 2, 3])
    await w.orch.pause_batch(PauseBatch(batch_id=b))
    # the job had fetched every byte when the pause left its lease: told all the same
    assert (await w.end_job(f"{b}:1")).parties == [b]
    assert [e.message_id for e in w.log.of_type(b, FileCompleted)] == [1]
    resumed = await w.orch.resume_batch(ResumeBatch(batch_id=b))
    assert (resumed.resumed, resumed.granted) == ([2], [2, 3])  # 1 is not fetched again


async def test_pause_leaves_the_leases_keeping_the_parts_and_grants_nothing_until_resumed(w):
    b = await start(w, [1, 2, 3])
    paused = await w.orch.pause_batch(PauseBatch(batch_id=b))
    assert paused == BatchPauseOutcome(batch_id=b, total_files=3, stopped=[1, 2])
    # nobody else waits: the jobs stop, and keep their .part files for the resume
    assert {m: (lease.parties, lease.keep_part) for m, lease in w.leases.leases.items()} == {
        1: ([], True), 2: ([], True)}
    for m in (1, 2):  # the downloaders stop them: cancelled outcomes addressed to nobody
        assert (await w.end_job(f"{b}:{m}", OutcomeStatus.cancelled)).parties == []
    assert w.jobs.published == [f"{b}:1", f"{b}:2"]  # no grant while paused
    assert await w.open_batches.list() == [b]  # still open: a restart looks at it

    again = await w.orch.pause_batch(PauseBatch(batch_id=b))
    assert isinstance(again, BatchPauseOutcome) and again.already_paused and not again.stopped

    resumed = await w.orch.resume_batch(ResumeBatch(batch_id=b))
    assert resumed == BatchResumeOutcome(batch_id=b, total_files=3, resumed=[1, 2],
                                         granted=[1, 2])
    assert w.jobs.published[2:] == [f"{b}:1:2", f"{b}:2:2"]  # new jobs, new ids
    for job in (f"{b}:1:2", f"{b}:2:2", f"{b}:3"):
        await w.end_job(job)
    assert [e.message_id for e in w.log.of_type(b, FileCompleted)] == [1, 2, 3]
    assert isinstance(w.log.events(b)[-1], BatchFinished)
    assert await w.open_batches.list() == [] and w.leases.leases == {}


async def test_a_file_shared_with_another_batch_keeps_downloading_for_it(w):
    paused = await start(w, [1, 2], max_concurrent=2)
    other = await start(w, [1], max_concurrent=1)  # joins the download of file 1
    await w.orch.pause_batch(PauseBatch(batch_id=paused))
    assert w.leases.leases[1].parties == [other]  # still wanted: the job goes on
    addressed = await w.end_job(f"{paused}:1")
    assert addressed.parties == [other, paused]  # the paused one learns its file is whole
    for b in (other, paused):
        assert [e.message_id for e in w.log.of_type(b, FileCompleted)] == [1]
    assert (await w.end_job(f"{paused}:2", OutcomeStatus.cancelled)).parties == []  # stopped
    await w.orch.resume_batch(ResumeBatch(batch_id=paused))
    assert w.jobs.published[-1] == f"{paused}:2:2"  # granted again: only the one it lacks
    assert f"{paused}:1:2" not in w.jobs.published


async def test_a_paused_batch_stays_paused_across_a_restart(w):
    b = await start(w, [1, 2, 3])
    # the pause was appended, then the orchestrator died before leaving the leases
    await w.log.append(b, [BatchPaused(batch_id=b, at=START, stopped=[1, 2])],
                       await w.log.last_seq(b))
    after = w.restarted()
    assert await after.orch.recover() == 1
    assert [lease.parties for lease in w.leases.leases.values()] == [[], []]
    assert all(lease.keep_part for lease in w.leases.leases.values())
    assert w.jobs.published == [f"{b}:1", f"{b}:2"]  # nothing granted
    await after.orch.sweep()
    await after.orch.sweep()
    assert w.jobs.published == [f"{b}:1", f"{b}:2"]
    resumed = await after.orch.resume_batch(ResumeBatch(batch_id=b))
    assert resumed.granted == [1, 2]


async def test_recovery_of_a_paused_batch_is_planned_as_leaving_its_leases_only():
    events = [started("p", [1, 2, 3]), granted("p", 1), dispatched("p", 1),
              BatchPaused(batch_id="p", at=START, stopped=[1])]
    plan = plan_recovery("p", events, None, START, timedelta(minutes=1))
    assert plan[0] == LeaveLease(1, "p", keep_part=True)
    assert [type(e).__name__ for e in plan[1:]] == ["Decide"]  # a reconcile, granting nothing
    assert react(events[-1], fold(events)) == [LeaveLease(1, "p", keep_part=True)]


async def test_a_paused_batch_can_be_cancelled_and_its_kept_parts_are_dropped(w):
    b = await start(w, [1, 2, 3])
    await w.orch.pause_batch(PauseBatch(batch_id=b))
    for m in (1, 2):  # the downloaders stopped them, keeping their .part files
        await w.end_job(f"{b}:{m}", OutcomeStatus.cancelled)
    cancelled = await w.orch.cancel_batch(CancelBatch(batch_id=b))
    assert isinstance(cancelled, BatchCancelOutcome) and cancelled.stopped == [1, 2, 3]
    # a job nobody waits for, per paused file: its downloader drops the .part and ends
    assert w.jobs.published[-2:] == [f"{b}:1:2", f"{b}:2:2"]
    assert {m: (lease.parties, lease.keep_part) for m, lease in w.leases.leases.items()} == {
        1: ([], False), 2: ([], False)}
    assert w.log.of_type(b, JobDispatched)[-1].job_id == f"{b}:2"  # nothing recorded
    assert await w.open_batches.list() == []
    late = await w.orch.resume_batch(ResumeBatch(batch_id=b))
    assert isinstance(late, BatchResumeOutcome) and late.already_finished and not late.granted


async def test_a_dispatch_overtaken_by_a_pause_leaves_the_lease_keeping_the_part(w):
    b = await start(w, [1], max_concurrent=1)
    await w.orch.pause_batch(PauseBatch(batch_id=b))
    # a second replica's dispatch of the permit the pause took back lands now
    await w.orch.executor.carry_out([Dispatch(b, entry(1), f"{b}:1", False)])
    assert (w.leases.leases[1].parties, w.leases.leases[1].keep_part) == ([], True)
    assert len(w.log.of_type(b, JobDispatched)) == 1  # the stale dispatch was not recorded


async def test_raising_max_concurrent_grants_at_once_and_lowering_interrupts_nothing(w):
    b = await start(w, [1, 2, 3, 4, 5], max_concurrent=1)
    raised = await w.orch.set_concurrency(SetConcurrency(batch_id=b, max_concurrent=3))
    assert raised == ConcurrencyOutcome(batch_id=b, max_concurrent=3, previous=1,
                                        granted=[2, 3])
    assert w.jobs.published == [f"{b}:1", f"{b}:2", f"{b}:3"]
    lowered = await w.orch.set_concurrency(SetConcurrency(batch_id=b, max_concurrent=1))
    assert lowered.granted == [] and lowered.previous == 3
    assert all(lease.parties == [b] for lease in w.leases.leases.values())  # none stopped
    await w.end_job(f"{b}:1")
    await w.end_job(f"{b}:2")
    assert len(w.jobs.published) == 3  # still 1 running of 1 allowed
    await w.end_job(f"{b}:3")
    assert w.jobs.published[-1] == f"{b}:4"
    await w.end_job(f"{b}:4")
    await w.end_job(f"{b}:5")
    finished = await w.orch.set_concurrency(SetConcurrency(batch_id=b, max_concurrent=5))
    assert finished.already_finished and finished.max_concurrent == 1


async def test_steering_an_unknown_batch_is_refused(w):
    for result in (await w.orch.pause_batch(PauseBatch(batch_id="nothere")),
                   await w.orch.resume_batch(ResumeBatch(batch_id="nothere")),
                   await w.orch.set_concurrency(SetConcurrency(batch_id="nothere",
                                                               max_concurrent=2))):
        assert isinstance(result, Rejection) and result.reason is RejectReason.batch_not_found
    assert w.orch.repo.locks_held() == 0


async def test_the_grants_of_one_decision_are_dispatched_side_by_side(w):
    """Their leases and jobs go out at once: the first publish waits until the third
    grant's is under way (one after the other, this would never end)."""
    all_three = asyncio.Event()
    started: list[str] = []
    publish = w.jobs.publish_job

    async def together(job: DownloadJob) -> None:
        started.append(job.job_id)
        if len(started) == 3:
            all_three.set()
        await asyncio.wait_for(all_three.wait(), 5)
        await publish(job)

    w.jobs.publish_job = together  # type: ignore[method-assign]
    batch_id = await start(w, [1, 2, 3, 4], max_concurrent=3)

    assert len(w.jobs.published) == 3
    dispatched = [e for e in w.log.events(batch_id) if isinstance(e, JobDispatched)]
    assert sorted(e.message_id for e in dispatched) == [1, 2, 3]


async def test_a_start_limited_to_chats_refuses_the_others_as_access_denied(tmp_path):
    w = world(tmp_path, ids=[1, 2])  # every message of the chat "c"
    accepted = await w.orch.start_batch(StartBatch(message_ids=[1, 2], chats=["elsewhere"]))
    assert [(f.message_id, f.error) for f in accepted.failed_to_start] == [
        (1, ErrorCode.access_denied), (2, ErrorCode.access_denied)]
    accepted = await w.orch.start_batch(StartBatch(message_ids=[1],
                                                   chats=["@C"]))
    assert accepted.started == [1]


async def test_a_token_limited_to_a_chat_by_one_name_starts_it_by_all(tmp_path):
    w = world(tmp_path, ids=[1, 2])  # every message of the chat "c"
    accepted = await w.orch.start_batch(StartBatch(message_ids=[1], chats=["-1001234"]))
    assert [(f.message_id, f.error) for f in accepted.failed_to_start] == [
        (1, ErrorCode.access_denied)]  # no other name of "c" is known yet
    w.orch.ports.catalog.names.append(frozenset({"c", "-1001234"}))
    limited = await w.orch.start_batch(StartBatch(message_ids=[1], chats=["-1001234"]))
    assert limited.started == [1]


async def test_an_allow_list_naming_a_chat_by_one_name_admits_it_and_tells_the_downloader(
        tmp_path):
    w = world(tmp_path, ids=[1, 2], allowed_chats="-1001234")  # the chat "c" by its id
    refused = await w.orch.start_batch(StartBatch(message_ids=[1]))
    assert [f.error for f in refused.failed_to_start] == [ErrorCode.access_denied]
    w.orch.ports.catalog.names.append(frozenset({"c", "-1001234"}))  # a sync learned it
    accepted = await w.orch.start_batch(StartBatch(message_ids=[1, 2], chats=["-1001234"]))
    assert accepted.started == [1, 2]
    # the downloaders check the allow-list by name, knowing no catalog: the job says it
    assert [j.chat_names for j in w.jobs.queue.values()] == [("-1001234",), ("-1001234",)]

    # a chat the allow-list names as the catalog does needs no other name
    w = world(tmp_path, ids=[3], allowed_chats="@C")
    w.orch.ports.catalog.names.append(frozenset({"c", "-1001234"}))
    assert (await w.orch.start_batch(StartBatch(message_ids=[3]))).started == [3]
    assert [j.chat_names for j in w.jobs.queue.values()] == [()]


# a caller's own batch id (watch rules)


async def test_a_start_sent_again_under_the_callers_batch_id_answers_the_same_batch(w):
    first = await w.orch.start_batch(StartBatch(message_ids=[1, 2], batch_id="batch_rule0001",
                                                rule_id="rule_0000abcd"))
    again = await w.restarted().orch.start_batch(StartBatch(
        message_ids=[1, 2], batch_id="batch_rule0001", rule_id="rule_0000abcd"))
    assert isinstance(first, BatchAccepted) and again == first
    assert first.batch_id == "batch_rule0001" and first.started == [1, 2]
    [begun] = w.log.of_type("batch_rule0001", BatchStarted)
    assert begun.rule_id == "rule_0000abcd"
    assert w.jobs.published == ["batch_rule0001:1", "batch_rule0001:2"]  # once each


async def test_a_batch_starts_at_its_priority_and_its_waiting_jobs_follow_a_change(w):
    batch = await start(w, [1, 2, 3], max_concurrent=2, priority=Priority.low)
    assert [j.priority for j in w.jobs.queue.values()] == [Priority.low, Priority.low]
    outcome = await w.orch.set_priority(SetPriority(batch_id=batch, priority=Priority.high))
    assert isinstance(outcome, PriorityOutcome)
    assert (outcome.priority, outcome.previous) == (Priority.high, Priority.low)
    assert [j.priority for j in w.jobs.queue.values()] == [Priority.high, Priority.high]
    await w.end_job(f"{batch}:1")  # the next grant goes at the new priority
    assert w.jobs.queue[w.jobs.seq_of(f"{batch}:3")].priority == Priority.high


async def test_a_batch_joining_a_waiting_job_raises_it_to_its_own_priority(w):
    await start(w, [1], max_concurrent=1, priority=Priority.low)
    await start(w, [1], max_concurrent=1, priority=Priority.high)
    assert [j.priority for j in w.jobs.queue.values()] == [Priority.high]
    await start(w, [1], max_concurrent=1, priority=Priority.normal)  # never lowers it
    assert [j.priority for j in w.jobs.queue.values()] == [Priority.high]


async def test_a_batch_lowering_its_priority_never_lowers_a_job_another_batch_waits_for(w):
    archive = await start(w, [1, 2], max_concurrent=2)
    await start(w, [1], max_concurrent=1, priority=Priority.high)  # "this one now"
    await w.orch.set_priority(SetPriority(batch_id=archive, priority=Priority.low))
    # file 1's job is the archive's own, but the high batch waits for it too
    assert {j.entry.message_id: j.priority for j in w.jobs.queue.values()} == {
        1: Priority.high, 2: Priority.low}


async def test_a_job_a_leaving_batch_raised_goes_back_to_the_priority_of_those_still_waiting(w):
    archive = await start(w, [1, 2], max_concurrent=2, priority=Priority.low)
    urgent = await start(w, [1], max_concurrent=1, priority=Priority.high)
    assert w.jobs.queue[w.jobs.seq_of(f"{archive}:1")].priority == Priority.high  # joined
    await w.orch.cancel_batch(CancelBatch(batch_id=urgent))
    assert w.jobs.queue[w.jobs.seq_of(f"{archive}:1")].priority == Priority.low


async def test_the_priority_of_an_unknown_or_finished_batch(w):
    refused = await w.orch.set_priority(SetPriority(batch_id="nope", priority=Priority.high))
    assert isinstance(refused, Rejection) and refused.reason == RejectReason.batch_not_found
    batch = await start(w, [1], max_concurrent=1)
    await w.end_job(f"{batch}:1")
    done = await w.orch.set_priority(SetPriority(batch_id=batch, priority=Priority.high))
    assert done.already_finished and done.priority == Priority.normal
