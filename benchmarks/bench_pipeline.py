"""How tgdl's throughput scales: ratios measured within one run.

Real nats-server and PostgreSQL (embedded, in a temporary folder) back the orchestrator,
the projector, the downloaders and the simulated Telegram, all running as asyncio tasks
of this one process. Batches are driven over NATS request/reply as any client would.
Every scenario gets a fresh namespace, database schema and media folder, so nothing is
ever "already downloaded".

Shared machines are noisy: only ratios between runs of the same invocation mean anything,
and nothing here asserts a time. The run fails only if a batch does not download every
file, or the simulated Telegram served more streams at once than the permits allow.

    python benchmarks/bench_pipeline.py
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import nats
from nats.aio.client import Client as NATS
from rich import box
from rich.console import Console
from rich.table import Table
from stack import BatchEnds

from tgdl.bus.eventlog import EventLog
from tgdl.contracts.catalog import MediaKind
from tgdl.contracts.commands import CommandReply, StartBatch
from tgdl.contracts.config import CommonSettings
from tgdl.contracts.events import BatchFinished, FileCompleted
from tgdl.contracts.subjects import Names
from tgdl.db import catalog as catalog_db
from tgdl.db.connection import connect as db_connect
from tgdl.db.connection import create_pool
from tgdl.db.readmodel import batch_status
from tgdl.downloader.app import serve as serve_downloader
from tgdl.downloader.settings import DownloaderSettings
from tgdl.launcher.embedded import start_nats, start_postgres
from tgdl.launcher.prepare import prepare
from tgdl.orchestrator.app import OrchestratorService
from tgdl.orchestrator.settings import OrchestratorSettings
from tgdl.projector import app as projector_app
from tgdl.projector.settings import ProjectorSettings
from tgdl.runtime import setup_logging
from tgdl.simtelegram import client as sim_client
from tgdl.simtelegram.catalog import SimMessage
from tgdl.simtelegram.settings import SimSettings

TESTS_DIR = Path(__file__).resolve().parents[1] / "tests"
MB = 1_000_000
# Like a real account: every connection paced, every answer a little late.
ACCOUNT_LIKE = SimSettings(bandwidth=4 * MB, latency=0.05)
INSTANT = SimSettings(bandwidth=0, latency=0.0)  # isolates the pipeline's own overhead
GLOBAL_CAP = 8
BATCH_TIMEOUT = 60.0  # seconds: a stuck batch ends the run instead of hanging it
LAG_POLL = 0.005  # seconds between read-model polls once a batch has finished

console = Console()


# --- the stack under test ----------------------------------------------------------------


@dataclass(frozen=True)
class Servers:
    nats_url: str
    database_url: str
    scratch: Path  # media folders live here; removed at the end


def catalog_of(sizes: Sequence[int]) -> list[SimMessage]:
    """One media message per size, ids 1..n, in a chat of its own."""
    start = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)
    return [
        SimMessage(message_id=i, chat="bench", telegram_message_id=1000 + i,
                   media_kind=MediaKind.document, file_name=f"bench-{i:03d}.bin",
                   mime_type="application/octet-stream", size=size,
                   date=start + timedelta(minutes=i), dc_id=2)
        for i, size in enumerate(sizes, start=1)
    ]


def running_sim(settings: SimSettings, catalog: Sequence[SimMessage]
                ) -> AbstractAsyncContextManager[str]:
    """The tests' in-process simulated Telegram (real HTTP over loopback)."""
    if str(TESTS_DIR) not in sys.path:
        sys.path.insert(0, str(TESTS_DIR))
    from sim_helpers import running_sim as run

    return run(settings, catalog)


@dataclass
class BatchRun:
    batch_id: str
    files: int
    bytes: int
    started: float  # perf_counter when the start command was sent
    finished: float  # perf_counter when BatchFinished reached us
    visible: float  # perf_counter when the read model first said finished

    @property
    def latency(self) -> float:
        return self.finished - self.started

    @property
    def projector_lag(self) -> float:
        return self.visible - self.finished


@dataclass
class Pipeline:
    nc: NATS
    names: Names
    sim_url: str
    pool: asyncpg.Pool
    sizes: dict[int, int]
    ends: BatchEnds

    async def run_batch(self, ids: Sequence[int], max_concurrent: int) -> BatchRun:
        started = time.perf_counter()
        command = StartBatch(message_ids=list(ids), max_concurrent=max_concurrent)
        msg = await self.nc.request(self.names.cmd_batch_start,
                                    command.model_dump_json().encode(), timeout=10)
        reply = CommandReply.model_validate_json(msg.data)
        if reply.ok is None or not hasattr(reply.ok, "batch_id"):
            raise RuntimeError(f"start refused: {reply.rejected}")
        batch_id = reply.ok.batch_id
        finished = await self.ends.wait(batch_id)
        visible = await self._until_visible(batch_id)
        await self._check(batch_id, ids)
        return BatchRun(batch_id, len(ids), sum(self.sizes[i] for i in ids),
                        started, finished, visible)

    async def _until_visible(self, batch_id: str) -> float:
        deadline = time.monotonic() + BATCH_TIMEOUT
        while True:
            status = await batch_status(self.pool, batch_id)
            if status is not None and status.finished:
                return time.perf_counter()
            if time.monotonic() > deadline:
                raise TimeoutError(f"the read model never showed {batch_id} finished")
            await asyncio.sleep(LAG_POLL)

    async def _check(self, batch_id: str, ids: Sequence[int]) -> None:
        """The log ends with BatchFinished and every file is on disk at its full size."""
        events, _ = await EventLog(self.nc.jetstream(), self.names).load(batch_id)
        done = [e for e in events if isinstance(e, FileCompleted)]
        if not isinstance(events[-1], BatchFinished) or len(done) != len(ids):
            raise RuntimeError(f"{batch_id}: {len(done)} of {len(ids)} files completed")
        wrong = wrong_sizes({e.file_path: self.sizes[e.message_id] for e in done})
        if wrong:
            raise RuntimeError(f"{batch_id}: wrong size on disk: {', '.join(wrong)}")

    async def max_serving(self) -> int:
        return (await sim_client.stats(self.sim_url))["max_serving"]


def wrong_sizes(expected: dict[str, int]) -> list[str]:
    """Paths whose file on disk does not have the expected size."""
    return [path for path, size in expected.items() if Path(path).stat().st_size != size]


async def _until_ready(nc: NATS, names: Names, replicas: int,
                       orchestrator: OrchestratorService, tasks: list[asyncio.Task]) -> None:
    """Every downloader is pulling, the orchestrator serves, the projector follows."""
    js = nc.jetstream()
    deadline = time.monotonic() + 30
    while True:
        for task in tasks:
            if task.done():
                task.result()  # surfaces a service that failed to start
                raise RuntimeError("a service stopped during startup")
        with contextlib.suppress(Exception):
            jobs = await js.consumer_info(names.jobs_stream, names.downloader_consumer)
            events = await js.stream_info(names.events_stream)
            if (jobs.num_waiting >= replicas and hasattr(orchestrator, "orch")
                    and events.state.consumer_count >= 1):
                return
        if time.monotonic() > deadline:
            raise TimeoutError("the services did not become ready within 30 s")
        await asyncio.sleep(0.05)


@asynccontextmanager
async def pipeline(servers: Servers, sim: SimSettings, sizes: Sequence[int],
                   replicas: int = 1, slots: int = 5,
                   downloader: dict | None = None) -> AsyncIterator[Pipeline]:
    token = uuid.uuid4().hex[:10]
    media = servers.scratch / f"media-{token}"
    media.mkdir()
    catalog = catalog_of(sizes)
    common = dict(nats_url=servers.nats_url, database_url=servers.database_url,
                  namespace=f"b{token}", db_schema=f"b_{token}", media_root=media,
                  global_cap=GLOBAL_CAP)
    names = Names(f"b{token}")
    async with running_sim(sim, catalog) as sim_url:
        await prepare(CommonSettings(**common))  # schema and topology, as `tgdl migrate`
        conn = await db_connect(servers.database_url, f"b_{token}")
        try:
            await catalog_db.upsert(conn, [m.to_entry() for m in catalog])
        finally:
            await conn.close()
        async with contextlib.AsyncExitStack() as cleanup:
            nc = await nats.connect(servers.nats_url, name="tgdl-bench")
            cleanup.push_async_callback(nc.drain)
            pool = await create_pool(servers.database_url, f"b_{token}", max_size=2)
            cleanup.push_async_callback(pool.close)
            bench = Pipeline(nc, names, sim_url, pool,
                             {m.message_id: m.size or 0 for m in catalog},
                             BatchEnds(names, BATCH_TIMEOUT))
            await nc.subscribe(names.all_batch_events, cb=bench.ends.on_event)
            await nc.flush()
            stop = asyncio.Event()
            orchestrator = OrchestratorService(OrchestratorSettings(**common))
            tasks = [asyncio.create_task(orchestrator.run(stop)),
                     asyncio.create_task(projector_app.run(ProjectorSettings(**common), stop))]
            tasks += [asyncio.create_task(serve_downloader(DownloaderSettings(
                **common, sim_url=sim_url, replica=f"d{i}", slots=slots, **(downloader or {})),
                stop))
                for i in range(replicas)]
            try:
                await _until_ready(nc, names, replicas, orchestrator, tasks)
                yield bench
            finally:
                stop.set()
                results = await asyncio.gather(*tasks, return_exceptions=True)
                failures = [r for r in results if isinstance(r, BaseException)]
                if failures and sys.exc_info()[1] is None:
                    raise failures[0]


# --- measurements ------------------------------------------------------------------------


@dataclass
class Measured:
    label: str
    wall: float
    bytes: int
    files: int
    cpu: float  # this process's CPU seconds per wall second (1.0 = one core busy)
    runs: list[BatchRun]
    max_serving: int
    ideal: float | None = None  # wall time if only the per-connection bandwidth limited it

    @property
    def mb_per_s(self) -> float:
        return self.bytes / MB / self.wall

    @property
    def worst_lag(self) -> float:
        return max(r.projector_lag for r in self.runs)


async def measure(label: str, bench: Pipeline, batches: Sequence[Sequence[int]],
                  max_concurrent: int, ideal: float | None = None) -> Measured:
    """Start `batches` together and wait until every one is finished and visible."""
    await sim_client.reset_stats(bench.sim_url)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    runs = await asyncio.gather(*(bench.run_batch(ids, max_concurrent) for ids in batches))
    wall = max(r.finished for r in runs) - min(r.started for r in runs)
    cpu = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    return Measured(label, wall, sum(r.bytes for r in runs), sum(r.files for r in runs), cpu,
                    list(runs), await bench.max_serving(), ideal)


def bandwidth_bound(sizes: Sequence[int], lanes: int, sim: SimSettings) -> float:
    """The makespan if files started in order on `lanes` connections and nothing but the
    simulated account's pacing took time (one latency to resolve, one to open)."""
    ends = [0.0] * lanes
    for size in sizes:
        lane = ends.index(min(ends))
        ends[lane] += 2 * sim.latency + size / sim.bandwidth
    return max(ends)


def random_sizes(count: int, low: int, high: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(low, high) for _ in range(count)]


def check_permits(m: Measured, allowed: int) -> None:
    if m.max_serving > allowed:
        raise RuntimeError(f"{m.label}: {m.max_serving} streams at once, allowed {allowed}")


async def concurrency(servers: Servers) -> list[Measured]:
    """One batch, one downloader (5 slots): max_concurrent 1, 3, 5."""
    sizes = random_sizes(16, 1 * MB, 4 * MB, seed=7)
    results = []
    for k in (1, 3, 5):
        async with pipeline(servers, ACCOUNT_LIKE, sizes, replicas=1, slots=5) as bench:
            m = await measure(f"max_concurrent {k}", bench, [list(bench.sizes)], k,
                              bandwidth_bound(sizes, k, ACCOUNT_LIKE))
        check_permits(m, k)
        results.append(m)
    return results


async def scale_out(servers: Servers) -> list[Measured]:
    """Two batches at max_concurrent 5 (10 wanted, global cap 8): 1 vs 2 replicas of 4."""
    sizes = random_sizes(24, 1 * MB, 4 * MB, seed=11)
    halves = [list(range(1, 13)), list(range(13, 25))]
    results = []
    for replicas in (1, 2):
        lanes = min(GLOBAL_CAP, 4 * replicas)
        async with pipeline(servers, ACCOUNT_LIKE, sizes, replicas=replicas, slots=4) as bench:
            m = await measure(f"{replicas} replica{'s' * (replicas > 1)}", bench,
                              halves, 5, bandwidth_bound(sizes, lanes, ACCOUNT_LIKE))
        check_permits(m, lanes)
        results.append(m)
    return results


@dataclass
class Overhead:
    singles: list[BatchRun]
    many: Measured


async def overhead(servers: Servers, singles: int = 30, many: int = 50) -> Overhead:
    """Tiny files, no pacing: what the pipeline itself costs per file."""
    sizes = [10_000] * (1 + singles + many)
    async with pipeline(servers, INSTANT, sizes, replicas=1, slots=5) as bench:
        await bench.run_batch([1], 1)  # warm-up: connections and consumers come up
        runs = [await bench.run_batch([m], 1) for m in range(2, 2 + singles)]
        batch = list(range(2 + singles, 2 + singles + many))
        m = await measure(f"{many} files, max_concurrent 5", bench, [batch], 5)
    check_permits(m, 5)
    return Overhead(runs, m)


# --- report ------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def p95(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def throughput_table(title: str, rows: Sequence[Measured]) -> Table:
    first = rows[0]
    table = Table(title=f"{title}\n{first.files} files, {first.bytes / MB:.1f} MB per run",
                  title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("run", no_wrap=True)
    for name in ("wall s", "MB/s", "ratio", "ideal s", "max\nserving", "CPU", "lag ms"):
        table.add_column(name, justify="right")
    for m in rows:
        table.add_row(m.label, f"{m.wall:.2f}", f"{m.mb_per_s:.1f}",
                      f"{first.wall / m.wall:.2f}x", f"{m.ideal:.2f}" if m.ideal else "-",
                      str(m.max_serving), f"{m.cpu:.0%}", f"{m.worst_lag * 1000:.0f}")
    return table


LEGEND = (
    "ratio: wall time of the first row / this row. ideal: the wall time if each file had "
    "one connection and only its bandwidth and latency limited it (parallel parts beat it). "
    "max serving: most files the simulated Telegram served at once (the permits held if <= "
    "the limit). CPU: this "
    "process's CPU time / wall time (100% = one core). lag: BatchFinished appended -> "
    f"finished visible in the read model (polled every {LAG_POLL * 1000:.0f} ms), worst batch."
)


def ratio_line(faster: Measured, slower: Measured, what: str) -> str:
    ideal = ""
    if faster.ideal and slower.ideal:
        ideal = f" (bandwidth alone would allow {slower.ideal / faster.ideal:.1f}x)"
    return f"{what}: {slower.wall / faster.wall:.1f}x faster{ideal}"


def report(conc: list[Measured], scale: list[Measured], over: Overhead) -> None:
    console.print(throughput_table(
        "1. One batch, one downloader with 5 slots; 4 MB/s and 50 ms per connection", conc))
    console.print(throughput_table(
        "2. Two batches, max_concurrent 5 each, cap 8; replicas of 4 slots", scale))
    console.print(LEGEND, style="dim")
    console.print()

    latencies = [r.latency for r in over.singles]
    lags = [r.projector_lag for r in over.singles]
    table = Table(title="3. Pipeline overhead: 10 kB files, no bandwidth limit, no latency",
                  title_justify="left", box=box.SIMPLE_HEAD)
    for name in ("measure", "median", "p95", "max"):
        table.add_column(name, justify="left" if name == "measure" else "right")
    table.add_row(f"start -> BatchFinished ({len(latencies)} one-file batches)",
                  ms(statistics.median(latencies)), ms(p95(latencies)), ms(max(latencies)))
    table.add_row("BatchFinished -> visible in read model",
                  ms(statistics.median(lags)), ms(p95(lags)), ms(max(lags)))
    console.print(table)
    many = over.many
    console.print(f"{many.label}: {many.files / many.wall:.0f} files/s "
                  f"({many.wall:.2f} s, projector lag {ms(many.worst_lag)}, "
                  f"CPU {many.cpu:.0%})")

    console.print()
    one = conc[0]
    for m in conc[1:]:
        console.print(ratio_line(m, one, f"{m.label} vs 1"))
    console.print(ratio_line(scale[1], scale[0], "2 downloader replicas vs 1"))
    all_lags = [r.projector_lag for m in (*conc, *scale, many) for r in m.runs] + lags
    console.print(f"projector lag over all {len(all_lags)} batches: median "
                  f"{ms(statistics.median(all_lags))}, max {ms(max(all_lags))}")


async def bench() -> None:
    # SIGTERM ends the run like Ctrl-C does: through the cleanup below.
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    scratch = Path(tempfile.mkdtemp(prefix="tgdl-bench-"))
    nats_server = pg = None
    try:
        nats_server = start_nats(scratch / "nats")
        pg = start_postgres(scratch / "pg")
        servers = Servers(nats_server.url, pg.url, scratch)
        console.print(
            f"tgdl pipeline benchmark: orchestrator, projector, downloaders and the simulated "
            f"Telegram as asyncio tasks of ONE process on {os.cpu_count()} cores (replicas "
            f"share its CPU); nats-server (fsync always) and PostgreSQL as separate "
            f"processes. Ratios only: compare rows of this run, not runs across machines.\n")
        began = time.perf_counter()
        conc = await concurrency(servers)
        scale = await scale_out(servers)
        over = await overhead(servers)
        report(conc, scale, over)
        from bench_parts import parts  # the parallel-parts scenarios (issue 10)

        await parts(servers)
        console.print(f"\nwhole run: {time.perf_counter() - began:.0f} s")
    finally:
        if nats_server:
            nats_server.stop()
        if pg:
            pg.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    setup_logging(logging.WARNING)  # as the services do: no traceback for an expected error
    try:
        asyncio.run(bench())
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print("interrupted; servers stopped and temporary files removed")
        sys.exit(130)


if __name__ == "__main__":
    main()
