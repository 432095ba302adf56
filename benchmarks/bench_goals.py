"""tgdl against its goals: every service its own process, as `tgdl run` starts them.

    python benchmarks/bench_goals.py [--full] [--only 1,3,...]

Seven scenarios, each reported with its figures and its ratio to a target:

1. against the seed's design: 50 files under 200 KiB and 20 files of 1-8 MiB at
   max_concurrent 5, tgdl against a plain loop (an asyncio semaphore of 5, httpx straight
   to the simulated Telegram's content route, writing files) over the same files;
2. against the bandwidth ideal: 50 files of 1-10 MB (--full: 1-50 MB) at max_concurrent 5;
3. overhead: start -> BatchFinished of one-file batches, instant Telegram;
4. throughput at scale: 40 concurrent batches of tiny files (10 each; --full: 50) with 1,
   2 and 4 downloader replicas, and batch-status latency from 8 concurrent readers;
5. cost growth: 10, 100 and 1 000 files (--full: and 10 000) across batches of 50;
6. memory: peak RSS of a downloader on a 10 MB file, then a 300 MiB one (--full: 2 GiB);
7. write amplification: read-model rows written per file-second of download (scenario 2);
8. a py-spy profile of the services over 400 tiny files (when py-spy can attach).

Writes benchmarks/results.json, BENCHMARKS.md and docs/bench.png. Nothing here asserts a
time: the run fails only if a batch misses a file or a file has the wrong size.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from simproc import CHAT
from stack import (
    INSTANT,
    Servers,
    Sim,
    Stack,
    Started,
    file_seconds,
    machine_cpu,
    ours,
    servers,
    stack,
)

from tgdl.contracts.events import EVENT_TYPES_HEADER

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results.json"
REPORT = ROOT / "BENCHMARKS.md"
CHART = ROOT / "docs" / "bench.png"
KiB, MiB, MB = 1024, 1024 * 1024, 1_000_000
TINY = 10_000  # bytes: a file whose cost is all orchestration
BATCH = 50  # files per batch request (TGDL_MAX_BATCH_IDS)
DEFAULTS = Sim()  # the simulated Telegram's defaults: 4 MB/s and 50 ms per connection
REPLICAS, CONNECTIONS = 2, 4  # `tgdl run`'s downloaders; connections per DC per replica

console = Console()


# --- figures -----------------------------------------------------------------------------


@dataclass
class Target:
    what: str
    value: float
    unit: str
    op: str  # "<=" or ">="
    goal: float

    @property
    def meets(self) -> bool:
        return self.value <= self.goal if self.op == "<=" else self.value >= self.goal

    def line(self) -> str:
        mark = "[green]meets[/]" if self.meets else "[red]misses[/]"
        return f"{mark}  {self.what}: {self.value:.3g}{self.unit} (target {self.op} " \
               f"{self.goal:g}{self.unit})"


@dataclass
class Scenario:
    key: str
    title: str
    figures: dict
    targets: list[Target] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)  # busy share of one core, by process
    wall: float = 0.0  # the wall seconds `cpu` was measured over


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def busy(before: dict[str, float], after: dict[str, float], wall: float) -> dict[str, float]:
    """Each process's CPU seconds per wall second over a window (1.0 = one core)."""
    return {k: round((after[k] - before.get(k, 0.0)) / wall, 3) for k in after}


def sizes_between(count: int, low: int, high: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(low, high) for _ in range(count)]


def chunks(ids: Sequence[int], size: int) -> list[list[int]]:
    return [list(ids[i:i + size]) for i in range(0, len(ids), size)]


async def run_batches(s: Stack, batches: Sequence[Sequence[int]], max_concurrent: int,
                      window: int | None = None) -> tuple[float, list[Started], list[list]]:
    """Start batches (at most `window` in flight) and wait for every BatchFinished;
    returns the wall time from the first start to the last finish, and each log."""
    gate = asyncio.Semaphore(window or len(batches))

    async def one(ids: Sequence[int]) -> tuple[Started, float]:
        async with gate:
            started = await s.start(ids, max_concurrent)
            return started, await s.finished(started)

    runs = await asyncio.gather(*(one(ids) for ids in batches))
    wall = max(f for _, f in runs) - min(st.at for st, _ in runs)
    logs = [await s.check(st) for st, _ in runs]
    return wall, [st for st, _ in runs], logs


# --- 1. against the seed's design --------------------------------------------------------


async def seed_loop(sim_url: str, ids: Sequence[int], folder: Path, limit: int) -> float:
    """The seed's design: at most `limit` plain fetches at a time, each file in one
    request to the content route, written to disk."""
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    gate = asyncio.Semaphore(limit)
    began = time.perf_counter()
    async with httpx.AsyncClient(base_url=sim_url, timeout=120) as http:
        async def one(message_id: int) -> None:
            async with gate:
                url = f"/chats/{CHAT}/messages/{1000 + message_id}/content"
                async with http.stream("GET", url) as r:
                    r.raise_for_status()
                    # A plain loop writes as it reads, in the event loop's thread.
                    with open(folder / f"{message_id}.bin", "wb") as out:  # noqa: ASYNC230
                        async for chunk in r.aiter_bytes():
                            out.write(chunk)

        await asyncio.gather(*(one(m) for m in ids))
    wall = time.perf_counter() - began
    shutil.rmtree(folder, ignore_errors=True)
    return wall


async def against_seed(srv: Servers, full: bool) -> list[Scenario]:
    small = sizes_between(50, 10 * KiB, 200 * KiB, seed=7)
    medium = sizes_between(20, 1 * MiB, 8 * MiB, seed=8)
    # fresh files each round, who goes first alternating; the best of four damps the
    # spread of the small files between runs (0.98-1.21 x the seed with the best of two)
    rounds = 4
    per_round = len(small) + len(medium)
    work = {"small": (small, 0), "medium": (medium, len(small))}
    seed_s: dict[str, list[float]] = {k: [] for k in work}
    tgdl_s: dict[str, list[float]] = {k: [] for k in work}
    cpu: dict[str, dict[str, float]] = {}
    async with stack(srv, (small + medium) * rounds, DEFAULTS) as s:
        for r in range(rounds):
            for kind, (sizes, offset) in work.items():
                ids = list(range(r * per_round + offset + 1,
                                 r * per_round + offset + len(sizes) + 1))
                folder = s.folder / f"seed-{r}-{kind}"

                async def tgdl(ids: list[int] = ids, kind: str = kind) -> None:
                    before = s.cpu()
                    wall, _, _ = await run_batches(s, [ids], 5)
                    tgdl_s[kind].append(wall)
                    cpu[kind] = busy(before, s.cpu(), wall)

                async def seed(ids: list[int] = ids, folder: Path = folder,
                               kind: str = kind) -> None:
                    seed_s[kind].append(await seed_loop(s.sim_url, ids, folder, 5))

                for step in ((seed, tgdl) if r % 2 == 0 else (tgdl, seed)):
                    await step()
    out = []
    for kind, goal, label in (("small", 1.10, "50 files under 200 KiB"),
                              ("medium", 1.03, "20 files of 1-8 MiB")):
        best_seed, best_tgdl = min(seed_s[kind]), min(tgdl_s[kind])
        # The seed's own bound: 5 lanes, each file one latency and its bytes at one
        # connection's pace, nothing else.
        lanes = sum(DEFAULTS.latency + b / DEFAULTS.bandwidth for b in work[kind][0]) / 5
        sc = Scenario(f"seed_{kind}", f"Against the seed's design: {label}, max_concurrent 5",
                      {"files": len(work[kind][0]), "bytes": sum(work[kind][0]),
                       "seed_s": round(best_seed, 3), "tgdl_s": round(best_tgdl, 3),
                       "one_request_lanes_bound_s": round(lanes, 3),
                       "seed_rounds_s": [round(x, 3) for x in seed_s[kind]],
                       "tgdl_rounds_s": [round(x, 3) for x in tgdl_s[kind]],
                       "ratio_tgdl_over_seed": round(best_tgdl / best_seed, 3)},
                      [Target(f"tgdl / seed, {label}", best_tgdl / best_seed, "", "<=", goal)],
                      cpu[kind], best_tgdl)
        out.append(sc)
    return out


# --- 2 and 7. against the bandwidth ideal; write amplification ----------------------------


async def against_ideal(srv: Servers, full: bool) -> list[Scenario]:
    sizes = sizes_between(50, 1 * MB, (50 if full else 10) * MB, seed=9)
    lanes = REPLICAS * CONNECTIONS
    # Every connection of the account busy at its pace from the first byte to the last.
    ideal = 2 * DEFAULTS.latency + sum(sizes) / (lanes * DEFAULTS.bandwidth)
    async with stack(srv, sizes, DEFAULTS) as s:
        writes0, progress0 = await s.settled_row_writes(), await s.progress_rows()
        before = s.cpu()
        wall, (started,), (events,) = await run_batches(s, [range(1, len(sizes) + 1)], 5)
        cpu = busy(before, s.cpu(), wall)
        await s.until_visible(started)
        progress = await s.progress_rows() - progress0
        s.stop("projector")  # its backends report their last counts as they exit
        after = await s.settled_row_writes()
    by_table = {t: n - writes0.get(t, 0) for t, n in sorted(after.items())
                if n - writes0.get(t, 0)}
    writes = sum(by_table.values())
    seconds = file_seconds(events)
    ideal_sc = Scenario(
        "bandwidth_ideal",
        f"Against the bandwidth ideal: 50 files of 1-{50 if full else 10} MB, max_concurrent 5",
        {"files": len(sizes), "bytes": sum(sizes), "wall_s": round(wall, 3),
         "ideal_s": round(ideal, 3), "mb_per_s": round(sum(sizes) / MB / wall, 2),
         "ideal_mb_per_s": lanes * DEFAULTS.bandwidth / MB, "connections": lanes,
         "ratio_ideal_over_measured": round(ideal / wall, 3)},
        [Target("ideal / measured, 50 files of 1-50 MB" if full else
                "ideal / measured, 50 files of 1-10 MB", ideal / wall, "", ">=", 0.97)],
        cpu, wall)
    writes_sc = Scenario(
        "write_amplification", "Write amplification: read-model rows per file-second",
        {"row_writes": writes, "file_seconds": round(seconds, 3), "files": len(sizes),
         "writes_per_file": round(writes / len(sizes), 2), "by_table": by_table,
         "writes_per_file_second": round(writes / seconds, 3),
         # the job rows written from progress (the projector's count), the rest are fixed
         "progress_rows": progress,
         "fixed_rows_per_file": round((writes - progress) / len(sizes), 2)},
        [Target("read-model rows written per file-second", writes / seconds, "", "<=", 1.5)])
    return [ideal_sc, writes_sc]


# --- 3 and 5. overhead; cost growth ------------------------------------------------------


TRACED = 15  # one-file batches followed step by step after the measured ones


async def hop_timeline(s: Stack, ids: Sequence[int]) -> list[dict]:
    """When each step of a one-file batch is first seen on NATS, in ms after its start
    (median over one batch per id, started through the NATS command): where the overhead
    goes. Traced apart from the measured batches, since watching every KV write and ack
    adds deliveries of its own."""
    n = s.names
    steps = {n.cmd_batch_start: "start command", n.download_jobs: "job queued"}

    def step(msg) -> str | None:
        subject, headers = msg.subject, msg.headers or {}
        if subject in steps:
            return steps[subject]
        if subject.startswith(f"$KV.{n.leases_bucket}."):
            return "lease deleted" if headers.get("KV-Operation") else "lease written"
        if subject.startswith(f"$KV.{n.files_bucket}."):
            return "file's record written"
        if subject.startswith(f"$JS.ACK.{n.jobs_stream}."):
            return "job acknowledged"
        if headers.get(EVENT_TYPES_HEADER):
            return "appended: " + headers[EVENT_TYPES_HEADER].replace(",", ", ")
        if subject.endswith(".done"):
            return "outcome published"
        return None

    seen: list[tuple[float, str]] = []

    async def on(msg) -> None:
        if (what := step(msg)) is not None:
            seen.append((time.perf_counter(), what))
    subs = [await s.nc.subscribe(subject, cb=on) for subject in (
        n.cmd_batch_start, n.all_batch_events, n.download_jobs, n.all_file_done,
        f"$KV.{n.leases_bucket}.>", f"$KV.{n.files_bucket}.>", f"$JS.ACK.{n.jobs_stream}.>")]
    timeline: dict[str, list[float]] = {}
    try:
        for m in ids:
            seen.clear()
            st = await s.start_command([m], 1)
            await s.finished(st)
            # the lease released and the job acknowledged come after BatchFinished, and
            # must not be counted in the next batch
            for _ in range(200):
                if {"lease deleted", "job acknowledged"} <= {what for _, what in seen}:
                    break
                await asyncio.sleep(0.005)
            counts: Counter[str] = Counter()
            for at, what in seen:
                counts[what] += 1
                key = what if counts[what] == 1 else f"{what} ({counts[what]})"
                timeline.setdefault(key, []).append((at - st.at) * 1000)
    finally:
        for sub in subs:
            await sub.unsubscribe()
    rows = [{"step": k, "median_ms": round(statistics.median(v), 2), "batches": len(v)}
            for k, v in timeline.items() if len(v) * 2 > len(ids)]  # not a stray once
    return sorted(rows, key=lambda r: r["median_ms"])


def growth_runs(files: int) -> int:
    """Runs of a cost-growth step: a step of a second or so moves by a fifth with the
    machine's noise alone, so the short ones run five times (their median counts)."""
    return 1 if files >= 1000 else 5


async def overhead_and_growth(srv: Servers, full: bool, singles: int = 30) -> list[Scenario]:
    steps = [10, 100, 1000] + ([10_000] if full else [])
    sizes = [TINY] * (1 + 2 * singles + TRACED + sum(n * growth_runs(n) for n in steps))
    async with stack(srv, sizes, INSTANT) as s:
        await s.finished(await s.start_command([1], 1))  # warm-up
        by_command: list[float] = []
        by_http: list[float] = []
        before, t0 = s.cpu(), time.perf_counter()
        for m in range(2, 2 + 2 * singles, 2):  # interleaved: a noisy moment hits both
            st = await s.start_command([m], 1)
            by_command.append(await s.finished(st) - st.at)
            st = await s.start([m + 1], 1)
            by_http.append(await s.finished(st) - st.at)
        cpu = busy(before, s.cpu(), time.perf_counter() - t0)
        first = 2 + 2 * singles
        hops = await hop_timeline(s, range(first, first + TRACED))
        first += TRACED
        over = Scenario(
            "overhead", "Overhead: one-file batches, instant Telegram, start -> BatchFinished",
            {"batches": singles, "file_bytes": TINY,
             "command_median_ms": round(statistics.median(by_command) * 1000, 1),
             "command_p95_ms": round(pct(by_command, 0.95) * 1000, 1),
             "http_median_ms": round(statistics.median(by_http) * 1000, 1),
             "http_p95_ms": round(pct(by_http, 0.95) * 1000, 1),
             "traced_batches": TRACED, "hops": hops},
            [Target("one-file batch start -> BatchFinished, median",
                    statistics.median(by_command) * 1000, " ms", "<=", 10)],
            cpu, time.perf_counter() - t0)
        per_file, rows = {}, []
        growth_cpu: dict[str, float] = {}
        for n in steps:
            walls = []
            for _ in range(growth_runs(n)):
                ids = list(range(first, first + n))
                first += n
                before = s.cpu()
                wall, _, _ = await run_batches(s, chunks(ids, BATCH), 5, window=4)
                growth_cpu = busy(before, s.cpu(), wall)
                walls.append(wall)
            wall = statistics.median(walls)
            per_file[n] = wall / n
            rows.append({"files": n, "batches": len(chunks(ids, BATCH)), "runs": len(walls),
                         "wall_s": round(wall, 3), "ms_per_file": round(wall / n * 1000, 2)})
            console.print(f"  cost growth: {n} files in {wall:.1f} s"
                          + (f" (median of {len(walls)} runs)" if len(walls) > 1 else ""))
    flat = [per_file[n] for n in steps if n >= 100]
    spread = max(flat) / min(flat)
    growth = Scenario(
        "cost_growth", "Cost growth: files across batches of 50 (4 in flight), instant Telegram",
        {"steps": rows, "spread_100_up": round(spread, 3)},
        [Target(f"time per file, largest / smallest from 100 to {steps[-1]} files", spread, "",
                "<=", 1.2)],
        growth_cpu, rows[-1]["wall_s"])
    return [over, growth]


# --- 4. throughput at scale --------------------------------------------------------------


async def status_reader(s: Stack, live: list[str], done: asyncio.Event,
                        latencies: list[float], first: int) -> None:
    """GET batch-status of the running batches in turn until `done`."""
    n = first
    while not done.is_set():
        if not live:
            await asyncio.sleep(0.005)
            continue
        batch_id = live[n % len(live)]
        n += 1
        t0 = time.perf_counter()
        r = await s.http.get(f"/api/media/batch-status/{batch_id}")
        latencies.append(time.perf_counter() - t0)
        if r.status_code != 200:
            raise RuntimeError(f"batch-status {r.status_code}: {r.text[:200]}")


STATUS_ROUTE = "/api/media/batch-status/{batch_id}"
# A route the gateway answers with a 404 through the same middleware, without a query or
# a body: what any request waits under the load, before the status read's own work.
NO_WORK_ROUTE = "/api/media/no-such-route"
PROBE_INTERVAL = 0.02  # s


async def no_work_probe(s: Stack, done: asyncio.Event, latencies: list[float]) -> None:
    """GET a route that does no work, every PROBE_INTERVAL until `done` (open loop, so the
    probe adds the same small load however slow the answers are)."""
    async def one() -> None:
        t0 = time.perf_counter()
        r = await s.http.get(NO_WORK_ROUTE)
        latencies.append(time.perf_counter() - t0)
        if r.status_code != 404:
            raise RuntimeError(f"{NO_WORK_ROUTE}: {r.status_code}: {r.text[:200]}")

    pending: set[asyncio.Task] = set()
    while not done.is_set():
        task = asyncio.create_task(one())
        pending.add(task)
        task.add_done_callback(pending.discard)
        await asyncio.sleep(PROBE_INTERVAL)  # a pace, not a wait for a condition
    await asyncio.gather(*pending)


async def gateway_status_buckets(s: Stack) -> dict[float, float]:
    """The gateway's own histogram of batch-status answers (time to the response's first
    byte, measured inside the gateway): cumulative count per upper bound in seconds."""
    text = (await s.http.get("/metrics")).text
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (sample.name == "tgdl_http_request_duration_seconds_bucket"
                    and sample.labels.get("route") == STATUS_ROUTE
                    and sample.labels.get("method") == "GET"):
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return buckets


def bucket_quantile(before: dict[float, float], after: dict[float, float],
                    q: float) -> float | None:
    """The upper bound of the histogram bucket holding quantile `q` of what was observed
    between two scrapes (an upper bound of the quantile, at the buckets' resolution)."""
    counts = {b: after[b] - before.get(b, 0.0) for b in sorted(after)}
    total = counts.get(float("inf"), 0.0)
    if not total:
        return None
    return next(b for b, n in counts.items() if n >= q * total)


async def start_and_finish(s: Stack, ids: list[int], live: list[str]) -> tuple[Started, float]:
    started = await s.start(ids, 5)
    live.append(started.batch_id)
    return started, await s.finished(started)


async def at_scale(srv: Servers, full: bool, readers: int = 8) -> list[Scenario]:
    per_batch = BATCH if full else 10
    batches = 40
    rows, cpus = [], {}
    # `tgdl run`'s global cap (8 downloads in flight) for 1, 2 and 4 replicas, then 4
    # replicas with a cap that fills all their slots: does the cap bound the throughput?
    for replicas, cap in ((1, 8), (2, 8), (4, 8), (4, 16)):
        ids = list(range(1, batches * per_batch + 1))
        async with stack(srv, [TINY] * len(ids), INSTANT, downloaders=replicas,
                         extra={"TGDL_GLOBAL_CAP": str(cap)}) as s:
            latencies: list[float] = []
            no_work: list[float] = []
            live: list[str] = []
            done = asyncio.Event()
            tasks = [asyncio.create_task(status_reader(s, live, done, latencies, i))
                     for i in range(readers)]
            tasks.append(asyncio.create_task(no_work_probe(s, done, no_work)))
            before, served_before = s.cpu(), await gateway_status_buckets(s)
            try:
                runs = await asyncio.gather(*(start_and_finish(s, c, live)
                                              for c in chunks(ids, per_batch)))
            finally:
                done.set()
                await asyncio.gather(*tasks)
            wall = max(f for _, f in runs) - min(st.at for st, _ in runs)
            cpus[(replicas, cap)] = busy(before, s.cpu(), wall)
            served = await gateway_status_buckets(s)
            for st, _ in runs:
                await s.check(st)
        rate = len(ids) / wall
        rows.append({"replicas": replicas, "global_cap": cap, "files": len(ids),
                     "wall_s": round(wall, 3), "files_per_s": round(rate, 1),
                     # Little's law: the time each file holds one of the cap's slots
                     "slot_ms_per_file": round(cap / rate * 1000, 1),
                     "cpu_all_processes": round(ours(cpus[(replicas, cap)]), 2),
                     "readers": readers, "status_reads": len(latencies),
                     "status_p50_ms": round(pct(latencies, 0.5) * 1000, 1),
                     "status_p99_ms": round(pct(latencies, 0.99) * 1000, 1),
                     # the same wait for a request that costs the gateway no work
                     "no_work_p50_ms": round(pct(no_work, 0.5) * 1000, 1),
                     "no_work_p99_ms": round(pct(no_work, 0.99) * 1000, 1),
                     # the same reads as the gateway timed them itself (bucket bounds)
                     "gateway_status_p50_le_ms": _ms(bucket_quantile(served_before, served,
                                                                     0.5)),
                     "gateway_status_p99_le_ms": _ms(bucket_quantile(served_before, served,
                                                                     0.99)),
                     # every process's CPU per file: what two cores can carry
                     "cpu_ms_per_file": round(
                         ours(cpus[(replicas, cap)]) * wall / len(ids) * 1000, 1)})
        console.print(f"  at scale: {replicas} replicas, cap {cap}: {rate:.0f} files/s")
    last = next(r for r in rows if r["replicas"] == 4 and r["global_cap"] == 8)
    targets = [Target("files/s end to end with 4 replicas", last["files_per_s"], "", ">=", 300),
               Target("batch-status p99 under that load", last["status_p99_ms"], " ms", "<=",
                      20)]
    return [Scenario("at_scale", f"Throughput at scale: 40 concurrent batches of {per_batch} "
                     f"tiny files, instant Telegram, {readers} status readers",
                     {"rows": rows}, targets, cpus[(4, 8)], last["wall_s"])]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


# --- 6. memory ---------------------------------------------------------------------------


async def memory(srv: Servers, full: bool) -> list[Scenario]:
    big = 2 * 1024 * MiB if full else 300 * MiB
    async with stack(srv, [10 * MB, big], INSTANT, downloaders=1) as s:
        d = s.procs["downloader-1"]
        idle = d.rss()
        await run_batches(s, [[1]], 1)
        small_peak = d.rss(peak=True)
        before = s.cpu()
        wall, _, _ = await run_batches(s, [[2]], 1)
        cpu = busy(before, s.cpu(), wall)
        big_peak = d.rss(peak=True)
    label = f"{big // MiB} MiB" if big < 1024 * MiB else f"{big // (1024 * MiB)} GiB"
    return [Scenario(
        "memory", f"Memory: peak RSS of one downloader, 10 MB file then a {label} file",
        {"idle_mb": round(idle / MB, 1), "peak_10mb_file_mb": round(small_peak / MB, 1),
         "peak_big_file_mb": round(big_peak / MB, 1), "big_file_bytes": big,
         "big_file_s": round(wall, 2), "ratio_big_over_small": round(big_peak / small_peak, 3)},
        [Target(f"downloader peak RSS on a {label} file", big_peak / MB, " MB", "<=", 80),
         Target(f"peak RSS {label} / 10 MB file", big_peak / small_peak, "", "<=", 1.2)],
        cpu, wall)]


# --- report ------------------------------------------------------------------------------


async def profile(srv: Servers, full: bool) -> list[Scenario]:
    """py-spy over the service processes while 400 tiny files go through in batches of 50
    (instant Telegram): what each process does per file. Apart from the measured
    scenarios, since sampling costs the processes a little CPU."""
    import spy

    if spy.binary() is None:
        console.print("  py-spy not found: no profile")
        return []
    files = 400
    async with stack(srv, [TINY] * files, INSTANT) as s:
        names = ["orchestrator", "projector", "downloader-1", "simtelegram", "gateway"]
        recordings = [spy.start(n, s.procs[n].popen.pid, s.folder) for n in names]
        try:
            await asyncio.sleep(1.0)  # py-spy attaches
            before = s.cpu()
            wall, _, _ = await run_batches(s, chunks(range(1, files + 1), BATCH), 5, window=4)
            cpu = busy(before, s.cpu(), wall)
        finally:
            for rec in recordings:
                spy.stop(rec)
        summaries = {rec.name: spy.summarise(rec.out) for rec in recordings}
    return [Scenario("profile", f"Profile: py-spy over the services, {files} tiny files in "
                     "batches of 50, instant Telegram",
                     {"files": files, "wall_s": round(wall, 3), "rate_hz": spy.RATE,
                      "processes": summaries}, [], cpu, wall)]


SCENARIOS: dict[str, Callable] = {
    "1": against_seed, "2": against_ideal, "3": overhead_and_growth, "4": at_scale,
    "6": memory, "p": profile,
}


def chart(found: dict[str, Scenario], path: Path, when: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(17, 9))
    fig.suptitle("tgdl make bench: every service its own process "
                 f"({when[:10] or f'{datetime.now(UTC):%Y-%m-%d}'}, {os.cpu_count()} cores)")

    def off(ax, text: str) -> None:
        ax.text(0.5, 0.5, text, ha="center", va="center")
        ax.set_axis_off()

    ax = axes[0][0]
    if "seed_small" in found:
        kinds = [found["seed_small"], found["seed_medium"]]
        x = range(len(kinds))
        ax.bar([i - 0.2 for i in x], [k.figures["seed_s"] for k in kinds], 0.4, label="seed")
        ax.bar([i + 0.2 for i in x], [k.figures["tgdl_s"] for k in kinds], 0.4, label="tgdl")
        ax.set_xticks(list(x), ["50 x <200 KiB", "20 x 1-8 MiB"])
        ax.set_ylabel("seconds")
        ax.set_title("1. against the seed's design (lower is better)")
        ax.legend()
    else:
        off(ax, "1. not run")
    ax = axes[0][1]
    if "bandwidth_ideal" in found:
        f = found["bandwidth_ideal"].figures
        ax.bar(["ideal", "tgdl"], [f["ideal_s"], f["wall_s"]], color=["grey", "C1"])
        ax.set_ylabel("seconds")
        ax.set_title(f"2. 50 files, {f['bytes'] / MB:.0f} MB, vs bandwidth ideal")
    else:
        off(ax, "2. not run")
    ax = axes[0][2]
    if "at_scale" in found:
        rows = found["at_scale"].figures["rows"]
        ax.bar([f"{r['replicas']} (cap {r['global_cap']})" for r in rows],
               [r["files_per_s"] for r in rows])
        ax.axhline(300, color="red", linestyle="--", label="target 300 files/s")
        ax.set_xlabel("downloader replicas (global cap)")
        ax.set_ylabel("files/s")
        ax.set_title("4. throughput, 40 concurrent batches")
        ax.legend()
    else:
        off(ax, "4. not run")
    ax = axes[1][0]
    if "cost_growth" in found:
        steps = found["cost_growth"].figures["steps"]
        ax.plot([r["files"] for r in steps], [r["ms_per_file"] for r in steps], marker="o")
        ax.set_xscale("log")
        ax.set_xlabel("files across batches")
        ax.set_ylabel("ms per file")
        ax.set_ylim(bottom=0)
        ax.set_title("5. cost growth (flat is the goal)")
    else:
        off(ax, "5. not run")
    ax = axes[1][1]
    if "memory" in found:
        f = found["memory"].figures
        ax.bar(["idle", "10 MB file", f"{f['big_file_bytes'] // MiB} MiB file"],
               [f["idle_mb"], f["peak_10mb_file_mb"], f["peak_big_file_mb"]])
        ax.axhline(80, color="red", linestyle="--", label="target 80 MB")
        ax.set_ylabel("MB")
        ax.set_title("6. downloader RSS (peak)")
        ax.legend()
    else:
        off(ax, "6. not run")
    ax = axes[1][2]
    rows = [(k, t) for k, sc in found.items() for t in sc.targets]
    if rows:
        names = [t.what[:44] for _, t in rows]
        scores = [max(1e-3, (t.goal / t.value if t.op == "<=" else t.value / t.goal)
                      if t.value else 1e-3) for _, t in rows]
        ax.barh(names, scores, color=["C2" if t.meets else "C3" for _, t in rows])
        ax.axvline(1.0, color="black", linewidth=1)
        ax.set_xscale("log")
        ticks = [0.01, 0.03, 0.1, 0.3, 1, 3]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.set_xlim(min(0.01, min(scores) / 1.5), max(3, max(scores) * 1.5))
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=7)
        ax.set_title("targets: >= 1 meets (target / measured)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_results(found: dict[str, Scenario], run: dict) -> None:
    body = {"run": run, "scenarios": [
        {"key": sc.key, "title": sc.title, "figures": sc.figures,
         "targets": [{**asdict(t), "meets": t.meets} for t in sc.targets],
         "cpu_share_by_process": sc.cpu, "cpu_window_s": round(sc.wall, 3)}
        for sc in found.values()]}
    RESULTS.write_text(json.dumps(body, indent=2) + "\n")


def load_results() -> tuple[dict[str, Scenario], dict]:
    """The scenarios and run of results.json, to render the report again."""
    body = json.loads(RESULTS.read_text())
    found = {}
    for sc in body["scenarios"]:
        targets = [Target(**{k: v for k, v in t.items() if k != "meets"})
                   for t in sc["targets"]]
        found[sc["key"]] = Scenario(sc["key"], sc["title"], sc["figures"], targets,
                                    sc["cpu_share_by_process"], sc["cpu_window_s"])
    return found, body["run"]


def revision() -> str:
    """The commit measured; "-dirty" when the working tree had changes."""
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                              capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def reference_ms() -> float:
    """The machine's pace at the kind of work the services do (objects to JSON and back,
    one core): the best of five runs of a fixed workload, in ms. Runs on machines of
    another pace differ by about the ratio of this figure: compare it first."""
    doc = {"batch_id": "batch_0123456789ab", "files": [
        {"message_id": i, "size": i * 1000, "path": f"chat/{i}.jpg", "done": i % 2 == 0}
        for i in range(50)]}
    best = math.inf
    for _ in range(5):
        began = time.perf_counter()
        for _ in range(1000):
            json.loads(json.dumps(doc))
        best = min(best, time.perf_counter() - began)
    return round(best * 1000, 1)


async def bench(args: argparse.Namespace) -> None:
    main_task = asyncio.current_task()
    assert main_task is not None
    # SIGTERM and SIGINT (even where a shell started us with SIGINT ignored) end the run
    # through the cleanup of every stack.
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, main_task.cancel)
    if args.report_only:
        from report import markdown

        found, run = load_results()
        chart(found, CHART, run["date"])
        REPORT.write_text(markdown(found, run))
        console.print(f"{REPORT.relative_to(ROOT)} and {CHART.relative_to(ROOT)} rendered "
                      f"again from {RESULTS.relative_to(ROOT)} ({run['date']})")
        return
    wanted = args.only.split(",") if args.only else list(SCENARIOS)
    found: dict[str, Scenario] = {}
    began, machine_began, load = time.perf_counter(), machine_cpu(), os.getloadavg()[0]
    pace = reference_ms()
    with servers() as srv:
        for key in wanted:
            console.print(f"scenario {key} ...")
            t0 = time.perf_counter()
            for sc in await SCENARIOS[key](srv, args.full):
                found[sc.key] = sc
            console.print(f"  ({time.perf_counter() - t0:.0f} s)")
    run = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "full": args.full,
           "cores": os.cpu_count(), "python": platform.python_version(),
           "machine": platform.machine(), "seconds": round(time.perf_counter() - began, 1),
           "revision": revision(),
           # the whole machine's busy cores over the run (this bench and any other work)
           "machine_busy_cores": round((machine_cpu() - machine_began)
                                       / (time.perf_counter() - began), 2),
           "load_average_at_start": round(load, 2), "reference_ms": pace}
    console.print()
    for sc in found.values():
        for t in sc.targets:
            console.print(t.line())
        if args.only:
            console.print(f"  {sc.key}: {json.dumps(sc.figures)}", style="dim")
    if args.only and not args.write:
        console.print(f"\npart of the scenarios ({run['seconds']:.0f} s): results not written "
                      "(--write writes them anyway)")
        return
    from report import markdown

    write_results(found, run)
    chart(found, CHART, run["date"])
    REPORT.write_text(markdown(found, run))
    console.print(f"\n{RESULTS.relative_to(ROOT)}, {REPORT.relative_to(ROOT)} and "
                  f"{CHART.relative_to(ROOT)} written ({run['seconds']:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="the issue's sizes (about ten minutes)")
    parser.add_argument("--only", help="comma-separated scenarios: 1 (seed), 2 (ideal and "
                        "writes), 3 (overhead, growth), 4 (scale), 6 (memory), p (py-spy)")
    parser.add_argument("--write", action="store_true",
                        help="write results.json, BENCHMARKS.md and the chart after --only")
    parser.add_argument("--report-only", action="store_true",
                        help="render BENCHMARKS.md and the chart again from results.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(bench(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print("interrupted; processes stopped and temporary files removed")
        sys.exit(130)


if __name__ == "__main__":
    main()
