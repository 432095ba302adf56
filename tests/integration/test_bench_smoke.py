"""make bench's own code runs: a tiny deployment of service processes, a batch through it,
the seed's loop, the row counts, and the report. Nothing here times anything: the
benchmark reports times, tests do not."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_goals  # noqa: E402
import report  # noqa: E402
import stack  # noqa: E402


async def test_bench_drives_a_tiny_deployment_and_writes_its_report(servers, tmp_path):
    srv = stack.Servers(servers.nats_url, servers.database_url, tmp_path, None, None)
    async with stack.stack(srv, [10_000, 20_000, 30_000, 10_000], stack.INSTANT,
                           downloaders=1) as s:
        _, (started,), (events,) = await bench_goals.run_batches(s, [[1, 2]], 2)
        await s.until_visible(started)
        await bench_goals.seed_loop(s.sim_url, [3], tmp_path / "seed", 5)
        hops = [h["step"] for h in await bench_goals.hop_timeline(s, [4])]
        writes = await s.row_writes()
        cpu = s.cpu()
    assert stack.file_seconds(events) > 0
    assert sum(writes.values()) > 0
    assert {"orchestrator", "projector", "gateway", "downloader-1"} <= cpu.keys()
    assert not (tmp_path / "seed").exists()  # the seed's files are removed after timing
    # the one-file batch's steps, each seen on NATS (in causal order where one needs another)
    assert {"start command", "appended: BatchStarted, PermitGranted", "lease written",
            "job queued", "file's record written", "outcome published",
            "appended: FileCompleted, BatchFinished", "lease deleted",
            "job acknowledged"} <= set(hops)
    assert hops.index("start command") < hops.index("job queued") < hops.index(
        "outcome published") < hops.index("appended: FileCompleted, BatchFinished")

    target = bench_goals.Target("tgdl / seed, tiny", 1.5, "", "<=", 1.1)
    scenario = bench_goals.Scenario(
        "seed_small", "Against the seed's design", {
            "seed_s": 1.0, "tgdl_s": 1.5, "seed_rounds_s": [1.0], "tgdl_rounds_s": [1.5],
            "ratio_tgdl_over_seed": 1.5}, [target], {"orchestrator": 0.5}, 1.5)
    text = report.markdown({"seed_small": scenario}, {
        "date": "today", "full": False, "cores": 2, "python": "3.11", "seconds": 1.0})
    assert "| tgdl / seed, tiny | 1.5 | <= 1.1 | **misses** |" in text


def test_bench_chart_draws_what_ran_and_says_what_did_not(tmp_path):
    pytest.importorskip("matplotlib", reason="bench-only: benchmarks/requirements.txt")
    scenario = bench_goals.Scenario(
        "memory", "Memory", {"idle_mb": 80.0, "peak_10mb_file_mb": 90.0,
                             "peak_big_file_mb": 95.0, "big_file_bytes": 300 * 2**20},
        [bench_goals.Target("downloader peak RSS", 95.0, " MB", "<=", 80)])
    bench_goals.chart({"memory": scenario}, tmp_path / "bench.png")
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_report_says_what_the_throughput_goal_would_ask_of_each_process():
    rows = [{"replicas": 4, "global_cap": cap, "files": 2000, "wall_s": 40.0,
             "files_per_s": 50.0, "cpu_all_processes": 1.9, "cpu_ms_per_file": 38.0,
             "readers": 8, "status_reads": 6000, "status_p50_ms": 50.0} for cap in (8, 16)]
    scenario = bench_goals.Scenario(
        "at_scale", "Throughput at scale", {"rows": rows},
        [bench_goals.Target("files/s end to end with 4 replicas", 50.0, "", ">=", 300)],
        {"nats-server": 0.45, "downloader-1": 0.2, "downloader-2": 0.1, "gateway": 0.3})
    text = report._measured_bounds("at_scale", scenario)
    # 0.45 of a core over 40 s for 2000 files: 9 ms a file; 300 a second: 2.7 cores
    assert "nats-server 9.0, gateway 6.0, the downloaders together 6.0" in text
    assert "nats-server alone would need 2.7 cores" in text
    assert "the downloaders 1.8" in text
    # 0.3 of a core over 40 s for 6000 reads: 2 ms each; 8 of them at 30%: 53 ms
    assert "Each status read cost the gateway 2.0 ms of CPU" in text
    assert "8 reads take about 53 ms" in text


def test_bench_report_says_whether_a_request_without_work_already_misses_the_status_goal():
    def text_for(no_work_p99: float) -> str:
        rows = [{"replicas": 4, "global_cap": cap, "files": 2000, "wall_s": 40.0,
                 "files_per_s": 50.0, "slot_ms_per_file": 160.0, "cpu_all_processes": 1.9,
                 "readers": 8, "status_reads": 6000,
                 "status_p50_ms": 50.0, "status_p99_ms": 150.0, "no_work_p50_ms": 12.0,
                 "no_work_p99_ms": no_work_p99} for cap in (8, 16)]
        scenario = bench_goals.Scenario(
            "at_scale", "Throughput at scale", {"rows": rows},
            [bench_goals.Target("files/s end to end with 4 replicas", 50.0, "", ">=", 300),
             bench_goals.Target("batch-status p99 under that load", 150.0, " ms", "<=", 20)],
            {"nats-server": 0.45, "gateway": 0.3})
        assert "12.0 / " + str(no_work_p99) + " ms" in report._section("at_scale", scenario)
        return report._measured_bounds("at_scale", scenario)

    above = text_for(64.0)
    assert "waited 12.0 ms at the median and 64.0 ms at p99" in above
    assert "above the 20 ms goal, so no cheaper status read reaches it" in above
    assert "a cheaper status read would move it" in text_for(15.0)


def test_bench_report_splits_the_rows_into_progress_and_fixed_ones():
    scenario = bench_goals.Scenario(
        "write_amplification", "Write amplification", {
            "row_writes": 500, "files": 50, "file_seconds": 200.0, "by_table": {"jobs": 500},
            "writes_per_file": 10.0, "writes_per_file_second": 2.5, "progress_rows": 150,
            "fixed_rows_per_file": 7.0},
        [bench_goals.Target("read-model rows written per file-second", 2.5, "", "<=", 1.5)])
    text = report._measured_bounds("write_amplification", scenario)
    # 4 s a file: 1.5 a second is 6 rows, 3 of them progress: 3 left for 7 fixed ones
    assert "150 were progress (0.75 per file-second" in text
    assert "downloads for 4.0 s on average" in text
    assert "leaves 3.0 rows per file besides its progress, against 7.0 written" in text


def test_short_cost_growth_steps_run_several_times_and_say_so():
    assert bench_goals.growth_runs(100) > 1 and bench_goals.growth_runs(1000) == 1
    steps = [{"files": 100, "batches": 2, "runs": 5, "wall_s": 1.1, "ms_per_file": 11.0},
             {"files": 1000, "batches": 20, "runs": 1, "wall_s": 11.0, "ms_per_file": 11.0}]
    scenario = bench_goals.Scenario(
        "cost_growth", "Cost growth", {"steps": steps, "spread_100_up": 1.0},
        [bench_goals.Target("time per file", 1.0, "", "<=", 1.2)])
    text = report._section("cost_growth", scenario)
    assert "| 100 | 2 | 5 | 1.1 s | **11.0** |" in text
    assert "show the median run" in text


def test_bench_report_says_why_each_missed_target_is_out_of_reach_and_is_silent_on_met_ones():
    def at_scale(files_per_s: float) -> bench_goals.Scenario:
        rows = [{"replicas": 4, "global_cap": cap, "files": 2000, "wall_s": 40.0,
                 "files_per_s": files_per_s, "cpu_all_processes": 1.9, "cpu_ms_per_file": 38.0,
                 "readers": 8, "status_reads": 6000, "status_p50_ms": 50.0,
                 "status_p99_ms": 150.0, "no_work_p50_ms": 12.0, "no_work_p99_ms": 64.0}
                for cap in (8, 16)]
        return bench_goals.Scenario(
            "at_scale", "Throughput at scale", {"rows": rows},
            [bench_goals.Target("files/s end to end with 4 replicas", files_per_s, "", ">=",
                                300),
             bench_goals.Target("batch-status p99 under that load", 150.0, " ms", "<=", 20)],
            {"nats-server": 0.45, "gateway": 0.3})

    overhead = bench_goals.Scenario(
        "overhead", "Overhead", {"command_median_ms": 20.0, "hops": [
            {"step": "start command", "median_ms": 1.0},
            {"step": "appended: FileCompleted, BatchFinished", "median_ms": 20.0}]},
        [bench_goals.Target("one-file batch start -> BatchFinished, median", 20.0, " ms",
                            "<=", 10)])
    writes = bench_goals.Scenario(
        "write_amplification", "Write amplification", {
            "row_writes": 500, "files": 50, "file_seconds": 200.0, "writes_per_file": 10.0,
            "writes_per_file_second": 2.5, "progress_rows": 150, "fixed_rows_per_file": 5.0},
        [bench_goals.Target("read-model rows written per file-second", 2.5, "", "<=", 1.5)])

    text = "\n".join(report._why_missed(
        {"overhead": overhead, "at_scale": at_scale(50.0), "write_amplification": writes}))
    assert "2 steps follow each other (section 3's trace), about 10.0 ms apiece" in text
    # 0.45 of a core over 40 s for 2000 files: 9 ms a file; 300 a second at 38 ms: 5.7x
    assert "nats-server's share alone 9.0 ms" in text
    assert "300 files/s would need 5.7 times these cores" in text
    assert "without any work waited 64.0 ms at p99" in text
    # 5 fixed rows over 4 s files: 1.25 a second, 0.25 left for 0.75 of progress
    assert "come to 1.25 per file-second for files of 4.0 s, leaving 0.25" in text
    assert "0.75 here" in text

    met = at_scale(400.0)
    met.targets[1] = bench_goals.Target("batch-status p99 under that load", 15.0, " ms",
                                        "<=", 20)
    assert report._why_missed({"at_scale": met}) == []
