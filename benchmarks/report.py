"""BENCHMARKS.md from one run of bench_goals.py: the figures, the targets, and what bounds
each figure (the CPU each process spent, the round trips and fsyncs on a file's path)."""

from __future__ import annotations

from typing import Any

MB = 1_000_000
MACHINE = "machine"  # the whole machine's busy CPU: this bench's processes and others'
ORDER = ("gateway", "orchestrator", "projector", "downloader-1", "downloader-2",
         "downloader-3", "downloader-4", "simtelegram", "nats-server", "postgres", "bench",
         MACHINE)


def _table(head: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _cpu_line(sc: Any) -> str:
    """The busiest processes of a scenario, as shares of one core."""
    top = sorted(((v, k) for k, v in sc.cpu.items() if v >= 0.03 and k != MACHINE),
                 reverse=True)
    total = sum(v for k, v in sc.cpu.items() if k != MACHINE)
    parts = ", ".join(f"{k} {v:.0%}" for v, k in top[:6])
    line = f"CPU over {sc.wall:.1f} s (share of one core): {parts}; all processes {total:.0%}"
    if MACHINE in sc.cpu:
        line += (f"; the whole machine {sc.cpu[MACHINE]:.0%}, other work "
                 f"{max(sc.cpu[MACHINE] - total, 0):.0%}")
    return line + "."


def _le(ms: float | None) -> str:
    return "-" if ms is None else ("> 10 s" if ms == float("inf") else f"<= {ms:g} ms")


def _targets(found: dict) -> str:
    rows = [[t.what, f"{t.value:.3g}{t.unit}", f"{t.op} {t.goal:g}{t.unit}",
             "meets" if t.meets else "**misses**"]
            for sc in found.values() for t in sc.targets]
    return _table(["target", "measured", "goal", ""], rows)


def _cpu_table(found: dict) -> str:
    seen = [p for p in ORDER if any(p in sc.cpu for sc in found.values())]
    rows = [[sc.key, f"{sc.wall:.1f}"] + [f"{sc.cpu.get(p, 0):.0%}" if p in sc.cpu else ""
                                          for p in seen]
            for sc in found.values() if sc.cpu]
    return _table(["scenario", "window s", *seen], rows)


def _section(key: str, sc: Any) -> str:
    f = sc.figures
    if key.startswith("seed_"):
        return _table(["", "seed design", "tgdl", "tgdl / seed"], [
            ["best of rounds", f"{f['seed_s']:.2f} s", f"{f['tgdl_s']:.2f} s",
             f"**{f['ratio_tgdl_over_seed']:.2f}**"],
            ["every round", ", ".join(f"{x:.2f}" for x in f["seed_rounds_s"]),
             ", ".join(f"{x:.2f}" for x in f["tgdl_rounds_s"]), ""]]) + (
            f"\n\nOne request per file on 5 lanes, only latency and bandwidth counted: "
            f"{f['one_request_lanes_bound_s']:.2f} s." if "one_request_lanes_bound_s" in f
            else "")
    if key == "bandwidth_ideal":
        return _table(["files", "MB", "measured", "ideal", "MB/s", "ideal MB/s",
                       "ideal / measured"],
                      [[f["files"], f"{f['bytes'] / MB:.0f}", f"{f['wall_s']:.2f} s",
                        f"{f['ideal_s']:.2f} s", f["mb_per_s"], f["ideal_mb_per_s"],
                        f"**{f['ratio_ideal_over_measured']:.2f}**"]])
    if key == "overhead":
        return _table(["start through", "batches", "median", "p95"], [
            ["NATS command (orchestrator)", f["batches"], f"**{f['command_median_ms']} ms**",
             f"{f['command_p95_ms']} ms"],
            ["HTTP API (gateway)", f["batches"], f"{f['http_median_ms']} ms",
             f"{f['http_p95_ms']} ms"]]) + _hops(f)
    if key == "at_scale":
        return _table(["replicas", "global cap", "files", "wall", "files/s",
                       "slot time per file", "CPU, all processes", "CPU per file",
                       "status reads", "status p50", "status p99", "gateway's own p50",
                       "gateway's own p99", "no-work request p50 / p99"],
                      [[r["replicas"], r["global_cap"], r["files"], f"{r['wall_s']:.1f} s",
                        f"**{r['files_per_s']}**", f"{r['slot_ms_per_file']} ms",
                        f"{r['cpu_all_processes']:.0%}", f"{r.get('cpu_ms_per_file', '-')} ms",
                        r["status_reads"],
                        f"{r['status_p50_ms']} ms", f"**{r['status_p99_ms']} ms**",
                        _le(r.get("gateway_status_p50_le_ms")),
                        _le(r.get("gateway_status_p99_le_ms")),
                        _no_work(r)]
                       for r in f["rows"]]) + (
            "\n\nSlot time per file: the global cap / files per second (Little's law), the "
            "time each file holds one of the cap's download slots if they are always full. "
            "CPU per file: every process's CPU (the bench's own included) over the files "
            "done; two cores carry at most 2 000 ms of it a second. Status p50/p99 as the "
            "readers saw them; the gateway's own: the same reads timed inside the gateway "
            "(its histogram, to a bucket's bound), without the wait for a core before the "
            "request is read and after the answer is sent, in the gateway and in the "
            "readers' process. No-work request: a route the gateway answers 404 through the "
            "same middleware, without a query or a body, asked 50 times a second beside the "
            "readers: the wait any request has under this load.")
    if key == "cost_growth":
        return _table(["files", "batches", "runs", "wall", "ms per file"],
                      [[r["files"], r["batches"], r.get("runs", 1), f"{r['wall_s']:.1f} s",
                        f"**{r['ms_per_file']}**"] for r in f["steps"]]) + (
            f"\n\nLargest / smallest time per file from 100 files up: "
            f"**{f['spread_100_up']:.2f}**. A step of a second or so moves by a fifth with "
            "the machine's noise alone (the same 100 files took 1.0 s and 1.2 s in two runs), "
            "so steps under 1 000 files run five times and show the median run.")
    if key == "memory":
        big = f["big_file_bytes"] // 2**20
        return _table(["downloader", "RSS"], [
            ["idle, after start", f"{f['idle_mb']} MB"],
            ["peak after a 10 MB file", f"{f['peak_10mb_file_mb']} MB"],
            [f"peak after a {big} MiB file ({f['big_file_s']} s)",
             f"**{f['peak_big_file_mb']} MB**"]])
    if key == "write_amplification":
        tables = ", ".join(f"{t} {n}" for t, n in f["by_table"].items())
        return _table(["rows written", "files", "file-seconds", "rows per file",
                       "rows per file-second"],
                      [[f["row_writes"], f["files"], f["file_seconds"], f["writes_per_file"],
                        f"**{f['writes_per_file_second']}**"]]) + (
            f"\n\nBy table: {tables}.")
    if key == "profile":
        rows = []
        for name, p in f["processes"].items():
            share = p["samples"] / (f["rate_hz"] * f["wall_s"]) if f["wall_s"] else 0
            rows.append([name, f"{share:.0%}",
                         "<br>".join(f"{k} {v:.0%}" for k, v in p["project"][:5]),
                         "<br>".join(f"{k} {v:.0%}" for k, v in p["leaf"][:4])])
        return _table(["process", "Python busy (GIL held)", "innermost project frame",
                       "innermost frame"], rows) + (
            f"\n\n{f['files']} files in {f['wall_s']:.1f} s, sampled at {f['rate_hz']} Hz. "
            "Shares are of the process's own samples. An innermost project frame of "
            "`run_service`, `serve_http` or `consume_scope` means the event loop or a library "
            "(nats-py, asyncpg, pydantic, httpx) called from it, with no project function between.")
    return ""


def _hops(f: dict) -> str:
    """The traced one-file batches: each step as first seen on NATS, and the gap to the
    step before (where the time goes)."""
    if not f.get("hops"):
        return ""
    rows, before = [], 0.0
    for h in f["hops"]:
        rows.append([h["step"], f"{h['median_ms']:.1f} ms", f"+{h['median_ms'] - before:.1f}"])
        before = h["median_ms"]
    return (f"\n\nWhere it goes: {f['traced_batches']} more one-file batches, each step as "
            "the bench first saw it on NATS (median ms after the start command was sent; "
            "the bench watching every write and ack adds a little of its own):\n\n"
            + _table(["step", "seen at", "gap"], rows))


BOUNDS = {
    "seed_small": (
        "Round trips and per-file orchestration. The seed's loop makes one request per file "
        "(50 ms of latency, then up to 50 ms of bytes at 4 MB/s) on 5 lanes, and neither fsyncs "
        "nor renames. tgdl's downloader makes one request per small file too (the file's "
        "location is kept at sync time; the range hashes are asked for alongside), and each "
        "file crosses a chain of sequential hops: the job published on JetStream (fsync), "
        "the downloader's pull and its claim of the lease, the file fsynced and renamed, the "
        "outcome published (fsync), the orchestrator appending `FileCompleted` and the next "
        "`PermitGranted` as one message (one decision, one fsynced append), and the next "
        "job. A permit is free again only after that chain, so every hop is on the critical "
        "path of the next file of the lane."),
    "seed_medium": (
        "Bandwidth. Each file here takes 0.3-2 s of bytes at one connection's pace; tgdl fetches "
        "a file's 1 MiB parts over 2-4 connections at once (by size), so it beats a loop that "
        "reads each file in one request. The ceiling is the account's connections: 2 "
        "replicas x 4 connections x 4 MB/s."),
    "bandwidth_ideal": (
        "Bandwidth and how busy the connections are. The ideal is every connection of the "
        "account (2 replicas x 4, 4 MB/s each) carrying bytes from the first byte to the last, "
        "plus two latencies. What kept tgdl under it was the split between replicas: the "
        "queue hands each file to whichever replica asks first, so with max_concurrent 5 "
        "over two replicas of 4 slots one could hold four files (more requests than its 4 "
        "connections carry) while the other held one (idle connections); parts per file "
        "did not move it, 3 slots per replica instead of 4 did. A replica now takes another "
        "file only while its connections have room for another request (a file counts the "
        "part requests it has out), or once they have been full for `TGDL_ROOM_PATIENCE` "
        "(2 s), so a small file never waits for a large one to end. Measured on this machine, "
        "one run after another: 0.93-0.96 before, 0.98 with room alone; the patience costs "
        "a little (0.957-0.974 at 1 s, 0.974-0.982 at 2 s, 0.976-0.984 at 3 s). Each file "
        "also pays its round trips before its first byte. And a batch's last file runs on "
        "one replica's connections only: in a run traced file by file (0.973), the last "
        "(23.9 MB) ran alone for its final 1.3 s at half the account's connections, about "
        "0.65 s of the 1.1 s by which that run missed the ideal. A batch now grants its "
        "largest files first (the batch decider), so the files left for the end are the "
        "small ones and the connections stay busy until the last byte: the same scenario, "
        "one run after the other on this machine, 0.977 in request order, 0.986 largest "
        "first."),
    "write_amplification": (
        "Rows the projector writes per file whatever its length. A transaction writes each "
        "row once and only if it changes (tests/integration/test_read_model_writes.py "
        "counts them with row triggers on PostgreSQL): the file's row inserted with its batch, "
        "updated when it is queued and when it completes; the job's row when it first "
        "reports (progress or its outcome; a dispatch writes none, the file shows as queued "
        "meanwhile); and per transaction the one `projection_state` row that holds every "
        "stream's position (stored with the change). A file's events no longer touch its "
        "batch's row, and the projector lets messages gather for `TGDL_APPLY_DELAY` (50 ms), "
        "so a file's outcome, `FileCompleted`, the next permit and its dispatch share one "
        "transaction. Counted the same way, 13.2 rows per file one message per transaction "
        "became 9.2 and then 8.2, and 11.2 gathered became 7.0 and then 5.0. Progress adds at "
        "most one row per second per file. Files of a second or two are dominated by those "
        "fixed rows, so the figure falls as files get longer."),
    "overhead": (
        "Sequential hops, each a process's CPU plus an fsync: the start command, `BatchStarted` "
        "with its `PermitGranted` appended as one message (an expected-sequence append, "
        "fsynced), the lease taken, the job published (fsync), the downloader's pull, its "
        "claim of the lease (the file's record claimed beside it), its two requests to the "
        "simulated Telegram (side by side), the file written, fsynced and renamed, the lease "
        "ended (the file's record completed beside it) and the outcome published (fsync), "
        "and `FileCompleted` with `BatchFinished` appended as one message (the table above "
        "shows each step as it happened); each append used to be one per event, two more "
        "fsynced round trips per one-file batch (27.5 ms then, same machine). nats-server "
        "here fsyncs an awaited publish in about "
        "0.35 ms (2.9 k/s one at a time), so the fsyncs account for a few ms; the rest is "
        "Python in the orchestrator and the downloader (see the CPU table), and the wait of "
        "a pull consumer between fetches. Each handler argument taken from FastStream's "
        "context (the message, the orchestrator) used to cost a thread round trip, two per "
        "outcome in the orchestrator (py-spy: 17% of its busy samples); they resolve on the "
        "event loop now."),
    "cost_growth": (
        "Per-file CPU of the orchestrator, the downloaders and the projector on two shared "
        "cores: the same chain as the overhead, times the files in flight. A cost that grows "
        "with the history (a stream read whole, a table scanned, a bucket listed) would show "
        "as a time per file rising with the files already done; the machine's other load "
        "moves it too, so compare the steps of one run."),
    "at_scale": (
        "Not bandwidth (an instant Telegram). At most `TGDL_GLOBAL_CAP` downloads are in "
        "flight (the jobs consumer's max_ack_pending, 8 by default), so files/s = cap / the "
        "time a file holds its slot: the job's delivery to a pulling replica, the requests "
        "to the simulated Telegram, the write, fsync and rename, and the outcome published "
        "(fsync) before the ack. Under 40 batches that time is several times the one-file "
        "overhead above, because every hop queues behind the other files' hops in "
        "nats-server and in each process's event loop, and the cores are full: the CPU "
        "column is the two cores, so files/s is 2 000 ms over the CPU per file. About 15 "
        "JetStream operations carry a file (the lease written four times, the file's record "
        "twice, the job, two appends, the outcome, two acks, the admission's reads) plus "
        "their deliveries to every replica watching the leases, which is nats-server's "
        "share; each downloader's is mostly its two HTTP requests to the simulated Telegram "
        "(httpx) and FastStream's handling of the job. 300 files/s on two cores would need "
        "at most 6.7 ms of CPU per file, all processes together: a pipeline of one job per "
        "file through durable streams does not get there; jobs carrying many small files "
        "each would. The status reads are indexed queries (batch_files by its primary key, "
        "jobs by theirs) and the freshness check only reads positions sampled once a "
        "second, never waits for the projector; the gateway answers on its event loop, no "
        "thread round trip. What the readers see beyond the gateway's own timing is the wait "
        "for a core in the gateway and in the readers' process (the `bench` column), on two "
        "cores the pipeline keeps busy."),
    "memory": (
        "The interpreter and its imports (the idle figure: FastStream with pydantic and "
        "fast_depends, pydantic-settings, httpx, nats-py; Telethon is imported only by the "
        "Telethon adapter, and `python -m tgdl.downloader` leaves out the command-line tools "
        "FastStream and httpx load with themselves, uvicorn, click, rich and pygments: 58.2 "
        "MB idle before, 52.9 after), plus the parts in flight: a file of 20 MiB or more "
        "has 8 parts of 2 requests, 16 at once, where a 10 MB file has 8. A part goes to "
        "disk piece by piece as it arrives: each of Telegram's 128 KiB ranges is checked "
        "against its hash and written as soon as it is complete, and the part is recorded "
        "for a resume only once whole and fdatasynced, so a part in flight holds about one "
        "range, not 1 MiB (held whole, the 16 bodies put a 2 GiB file's peak at 82 MB, "
        "68.7 MB in pieces with the same imports; tests/unit/test_part_pieces.py). The file "
        "itself is streamed to disk, never held. The peak used to grow with the file (175 "
        "MB after 250 MiB against 105 MB after 10 MB): each part's body stayed on its httpx "
        "response, which sits in a reference cycle only the cyclic garbage collector frees, "
        "so bodies piled up between collections (a probe collecting every 50 ms flattened "
        "it, which named the cause); nothing is kept on a response now "
        "(tests/integration/test_downloader_memory.py bounds the ratio, and what a large "
        "file adds to the idle process, with the real process). The downloader fixes "
        "glibc's mmap threshold at 128 KiB: with the sliding default, once a 1 MiB body was "
        "freed later ones came from the heap, where freed memory stays resident (on a 300 "
        "MiB file, same machine, with bodies held whole: 80-82 MB at the peak before, 75-76 "
        "after). Telegram's range hashes of a file are dropped once their part has them (a "
        "2 GiB file kept 16 384: 84 MB before, 81-83 after). What is left above the idle "
        "figure is mostly the first download's warm-up (threads, connections), which the "
        "10 MB file's peak shows too."),
}


def _measured_bounds(key: str, sc: Any) -> str:
    """What this run's own figures say about the bound."""
    f = sc.figures
    if key == "at_scale":
        rows = {(r["replicas"], r["global_cap"]): r for r in f["rows"]}
        low, high = rows.get((4, 8)), rows.get((4, 16))
        if not (low and high):
            return ""
        verdict = ("so the cap bounds it" if high["files_per_s"] > 1.2 * low["files_per_s"]
                   else "so in this run the cap is not what bounds it: the time each file "
                   "holds its slot grew with the slots, which is the processes' CPU and "
                   "the hops queueing")
        per_file = low.get("cpu_ms_per_file")
        cost = (f", {per_file} ms of CPU per file (at most {2000 / per_file:.0f} files/s on "
                "two cores)" if per_file else "")
        return (f"In this run, 4 replicas did {low['files_per_s']} files/s under a cap of 8 "
                f"and {high['files_per_s']} under 16, {verdict}; the processes together "
                f"used {low['cpu_all_processes']:.2f} cores of the machine's two{cost}, "
                "which other work on the machine shares. The simulated Telegram is one of "
                "those processes (section 8 shows where its CPU goes)." + _per_file(sc, low))
    if key == "write_amplification" and "progress_rows" in f:
        goal = next((t.goal for t in sc.targets), 1.5)
        seconds = f["file_seconds"] / f["files"]  # a file's time downloading, on average
        progress = f["progress_rows"] / f["file_seconds"]
        room = goal * seconds - f["progress_rows"] / f["files"]
        return (f"Of the {f['row_writes']} rows, {f['progress_rows']} were progress "
                f"({progress:.2f} per file-second; at most one per second per file by "
                f"design); the other {f['fixed_rows_per_file']} per file are written whatever "
                f"its length. A file here downloads for {seconds:.1f} s on average, so "
                f"{goal:g} rows per file-second leaves {room:.1f} rows per file besides its "
                f"progress, against {f['fixed_rows_per_file']} written: a file's row inserted, "
                "queued and completed, its job's row ended, and the positions stored with "
                "them are already more.")
    if key == "memory":
        return (f"Idle, before any download, the downloader holds {f['idle_mb']} MB (87 MB "
                "while it imported Telethon with the simulated adapter too); the rest of a "
                "peak is the first download's warm-up and the parts in flight, each holding "
                "about one 128 KiB range while it is checked and written.")
    return ""


def _why_missed(found: dict) -> list[str]:
    """For each target this run missed, the figure of the same run that puts it out of
    this machine's reach while the design's guarantees hold (none: nothing to say)."""
    missed = {k: sc for k, sc in found.items() if any(not t.meets for t in sc.targets)}
    lines = []
    over = missed.get("overhead")
    if over is not None and over.figures.get("hops"):
        hops = over.figures["hops"]
        lines.append(
            f"- *One-file overhead* ({over.figures['command_median_ms']} ms): "
            f"{len(hops)} steps follow each other (section 3's trace), about "
            f"{hops[-1]['median_ms'] / len(hops):.1f} ms apiece on this machine, each a hop "
            "between processes and most of them an fsynced write. Their order is what loses "
            "nothing in a crash: the permit appended before the lease is taken, the lease "
            "before its job is queued, the outcome published before the job is acknowledged "
            "and appended before the batch ends.")
    scale = missed.get("at_scale")
    if scale is not None:
        row = next((r for r in scale.figures["rows"]
                    if r["replicas"] == 4 and r["global_cap"] == 8), None)
        goal = next((t.goal for t in scale.targets if t.what.startswith("files/s")), None)
        if row and goal and row.get("cpu_ms_per_file"):
            nats = scale.cpu.get("nats-server", 0.0) * row["wall_s"] / row["files"] * 1000
            lines.append(
                f"- *Throughput at scale* ({row['files_per_s']} files/s): two cores carry "
                f"2 000 ms of CPU a second; a file cost {row['cpu_ms_per_file']} ms of it "
                f"here, all processes together, nats-server's share alone {nats:.1f} ms "
                f"(the file's fsynced JetStream operations). {goal:g} files/s would need "
                f"{row['cpu_ms_per_file'] * goal / 2000:.1f} times these cores.")
        p99 = next((t for t in scale.targets if t.what.startswith("batch-status")), None)
        if row and p99 is not None and not p99.meets and row.get("no_work_p99_ms"):
            lines.append(
                f"- *Status p99 under that load* ({row['status_p99_ms']} ms): a request "
                f"the gateway answers without any work waited {row['no_work_p99_ms']} ms "
                "at p99 in the same load (section 4): the wait is for a core the pipeline "
                "keeps busy, not for the read.")
    writes = missed.get("write_amplification")
    if writes is not None and "progress_rows" in writes.figures:
        f = writes.figures
        seconds = f["file_seconds"] / f["files"]
        goal = next((t.goal for t in writes.targets), 1.5)
        fixed = f["fixed_rows_per_file"] / seconds
        lines.append(
            f"- *Read-model writes* ({f['writes_per_file_second']}): the rows every file "
            f"needs (its row inserted, queued and completed, its job's end, the positions "
            f"stored with them) come to {fixed:.2f} per file-second for files of "
            f"{seconds:.1f} s, leaving {max(goal - fixed, 0):.2f} per file-second for "
            "progress under the goal: live progress (about one row a second per file, "
            f"{f['progress_rows'] / f['file_seconds']:.2f} here) does not fit.")
    return [*lines, ""] if lines else []


def _no_work(row: dict) -> str:
    if "no_work_p99_ms" not in row:
        return "-"
    return f"{row['no_work_p50_ms']} / {row['no_work_p99_ms']} ms"


def _per_file(sc: Any, row: dict) -> str:
    """Each process's CPU per file at scale, and what the goal would ask of each."""
    goal = next((t.goal for t in sc.targets if t.what.startswith("files/s")), None)
    if not goal or not sc.cpu:
        return ""
    per_file = {k: v * row["wall_s"] / row["files"] * 1000 for k, v in sc.cpu.items()
                if k != MACHINE}
    downloaders = sum(v for k, v in per_file.items() if k.startswith("downloader"))
    shown = [(v, k) for k, v in per_file.items() if not k.startswith("downloader") and v >= 0.5]
    shown.append((downloaders, "the downloaders together"))  # after its equals: stable sort
    parts = [f"{k} {v:.1f}" for v, k in sorted(shown, key=lambda p: -p[0])]
    nats = per_file.get("nats-server", 0.0)
    text = (f" Per file, in ms of CPU: {', '.join(parts)} (the gateway's and the bench's "
            f"are mostly the status reads). At {goal:g} files/s, nats-server "
            f"alone would need {nats * goal / 1000:.1f} cores for the JetStream operations "
            f"of the files, and the downloaders {downloaders * goal / 1000:.1f}.")
    share, reads = sc.cpu.get("gateway", 0.0), row.get("status_reads")
    if share and reads:
        per_read = share * row["wall_s"] / reads * 1000
        queue = row["readers"] * per_read / share
        text += (f" Each status read cost the gateway {per_read:.1f} ms of CPU (FastAPI, the "
                 f"query, the body); with {row['readers']} readers asking at once a read waits "
                 f"for the others', so at the {share:.0%} of a core the gateway got, "
                 f"{row['readers']} reads take about {queue:.0f} ms (the readers saw "
                 f"{row['status_p50_ms']} ms at the median).")
    goal_p99 = next((t.goal for t in sc.targets if t.what.startswith("batch-status")), None)
    floor = row.get("no_work_p99_ms")
    if floor is not None and goal_p99 is not None:
        text += (f" A request that costs the gateway no work waited {row['no_work_p50_ms']} ms "
                 f"at the median and {floor} ms at p99 in the same load: ")
        text += (f"above the {goal_p99:g} ms goal, so no cheaper status read reaches it "
                 "while the pipeline keeps both cores busy; only a gateway (and its "
                 "clients) with a core of their own would."
                 if floor > goal_p99 else
                 f"within the {goal_p99:g} ms goal, so a cheaper status read would move it.")
    return text


def _sharing(run: dict) -> str:
    """How busy the whole machine was during the run (this bench's processes included)."""
    if "machine_busy_cores" not in run:
        return ""
    return (f" During this run the whole machine was busy {run['machine_busy_cores']:.2f} of "
            f"its {run['cores']} cores on average (load average "
            f"{run['load_average_at_start']:g} at the start), and each scenario's CPU line "
            "below says how much of that was other work: the bench shared the machine."
            + _pace(run))


def _pace(run: dict) -> str:
    if "reference_ms" not in run:
        return ""
    return (f" A fixed single-core workload of the kind the services do (`reference_ms`: "
            f"objects to JSON and back) took {run['reference_ms']:g} ms: a machine that "
            "takes longer is that much slower at every CPU-bound figure here, so compare "
            "it before comparing runs.")


def markdown(found: dict, run: dict) -> str:
    mode = "`--full` (the issue's sizes)" if run["full"] else "the default sizes"
    out = [
        "# Benchmarks: tgdl against its goals",
        "",
        "Written by `make bench` (`benchmarks/bench_goals.py`) on "
        f"{run['date']}, {run['cores']} cores, Python {run['python']}, {mode}, "
        f"{run['seconds']:.0f} s, revision `{run.get('revision', 'unknown')}`. "
        "Machine-readable: `benchmarks/results.json`. Every service "
        "runs as its own process, as `tgdl run` starts them (gateway, orchestrator, projector, "
        "downloaders, the simulated Telegram), over a real nats-server with every write "
        "fsynced and PostgreSQL 16. The simulated Telegram runs at its defaults (4 MB/s and "
        "50 ms per connection) unless a scenario says \"instant\" (no pacing, no latency: the "
        "pipeline's own cost). The machine is shared: read ratios within this run, not "
        "absolute figures across runs; nothing in the test suite times anything."
        + _sharing(run),
        "",
        "![make bench](docs/bench.png)",
        "",
        "## Targets",
        "",
        _targets(found),
        "",
    ]
    number = {"seed_small": "1a", "seed_medium": "1b", "bandwidth_ideal": "2",
              "overhead": "3", "at_scale": "4", "cost_growth": "5", "memory": "6",
              "write_amplification": "7", "profile": "8"}
    for key in sorted(found, key=lambda k: number.get(k, "9")):
        sc = found[key]
        out += [f"## {number.get(key, '')}. {sc.title}", "", _section(key, sc), ""]
        if key in BOUNDS:
            out += [f"**What bounds it.** {BOUNDS[key]}", ""]
        if _measured_bounds(key, sc):
            out += [_measured_bounds(key, sc), ""]
        if sc.cpu:
            out += [_cpu_line(sc), ""]
    out += [
        "## CPU by process",
        "",
        "CPU seconds per wall second of each process over each scenario's measured window "
        "(100% = one core busy; two cores in all). `bench` is the client side (this "
        "process: HTTP, the seed's loop, the status readers); `machine` is every process "
        "on the machine, these and any other work sharing its cores.",
        "",
        _cpu_table(found),
        "",
        "## Where a target is missed, and what would move it",
        "",
        *_why_missed(found),
        "- *Overhead and throughput at scale*: the per-file path. Done: one request to "
        "Telegram per file (the file's location stored at sync time), the events of one "
        "decision appended as one message, no progress messages for files of one part, one "
        "read for the admission when nobody waits. The CPU table shows which process is "
        "busiest, section 4 the CPU per file, and the py-spy profile (section 8) which code "
        "in each. What would move it further: fewer JetStream writes per file (the lease's "
        "end and release in one write, the file's record only for files that have forwards), "
        "a leaner HTTP client than httpx towards the simulated Telegram, and for throughput, "
        "jobs that carry many small files each (one job, one lease pass, one outcome for a "
        "run of photos).",
        "- *Everything with an instant Telegram*: the simulated Telegram computes every "
        "byte and every range hash it serves on the same two cores (section 8); against "
        "real Telegram that CPU is someone else's, so these figures are pessimistic by "
        "its share in the CPU table.",
        "- *Bandwidth ideal*: files are taken by the replica's free connections, and a "
        "batch grants its largest files first, so its end is small files on every "
        "connection rather than one large file on half of them (section 2); what is left "
        "is the patience that keeps small files from waiting behind large ones and each "
        "file's round trips before its first byte.",
        "- *Write amplification*: about 6 fixed rows per file (section 7), down from 7.8: "
        "a dispatch writes no job row, and a transaction stores every stream's position in "
        "one row. Left per file: its row inserted, queued and completed, its job's row when "
        "it ends, and about two positions rows (the transaction of its end, its share of the "
        "progress flushes). Further down: no queued row (the file would show as pending "
        "until its job first reports), progress rows every 2 s rather than every second, or "
        "a read model of one document per batch; at one progress row a second, files of a "
        "second or two cannot reach 1.5 per file-second.",
        "- *Memory*: the idle process is imports, now those a downloader uses (FastStream, "
        "pydantic, nats-py, httpx, prometheus-client); a peak above it is the first "
        "download's warm-up and the parts in flight, about one 128 KiB range each. A lighter "
        "stack than FastStream and pydantic would be what lowers it further.",
        "- *Status latency under load*: a read is one indexed query and a JSON body, about "
        "2 ms of the gateway's CPU with FastAPI; 8 readers asking at once queue behind each "
        "other's reads on a gateway that gets a share of a core the pipeline keeps busy "
        "(section 4 works it out from the run). Running the downloaders at a lower CPU "
        "priority (nice 10) was tried: p99 210 -> 168 ms for 10% fewer files a second, so "
        "it was left out. A request that does no work at all (section 4's no-work column) "
        "waits as long at p99 as a status read: the wait is for a core, not for the read, "
        "so a cheaper read (the body kept as the projector last published it) would not "
        "move the p99. What would: a gateway with a core of its own, or fewer processes "
        "competing for two.",
        "",
        "Run it: `make bench` (about 2 minutes for these scenarios; it installs "
        "`benchmarks/requirements.lock` for the chart), `make bench ARGS=--full` for the "
        "issue's sizes (2 GiB file, 10 000 files, "
        "50 MB files, 50 files per batch at scale: about ten minutes, plus the in-process "
        "scenarios), or "
        "`.venv/bin/python benchmarks/bench_goals.py --only 3` for one scenario.",
        "",
    ]
    return "\n".join(out)
