"""tgdl as `tgdl run` starts it, for benchmarks: every service its own OS process.

`servers()` starts one nats-server (fsync always) and one PostgreSQL in a temporary
folder for the whole run. `stack()` adds, for one scenario, the simulated Telegram (its
own process, serving exactly the bench's files), the orchestrator, the projector, the
gateway and N downloader replicas (`python -m tgdl.<service>` with `TGDL_*` variables),
in a namespace, schema and media folder of its own. Every process is stopped and every
folder removed on the way out, also on Ctrl-C; a bench killed outright takes its children
along (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import nats
import psutil
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from prometheus_client.parser import text_string_to_metric_families

from tgdl.bus.eventlog import EventLog
from tgdl.contracts.commands import CommandReply, StartBatch
from tgdl.contracts.config import CommonSettings
from tgdl.contracts.events import BatchFinished, FileCompleted, PermitGranted, types_in
from tgdl.contracts.subjects import Names
from tgdl.db import catalog as catalog_db
from tgdl.db.connection import connect as db_connect
from tgdl.launcher.embedded import free_port, start_nats, start_postgres
from tgdl.launcher.lifeline import die_with_parent
from tgdl.launcher.plan import settings_from
from tgdl.launcher.prepare import prepare
from tgdl.simtelegram import client as sim_client

HERE = Path(__file__).resolve().parent
BATCH_TIMEOUT = 300.0  # seconds: a stuck batch ends the run instead of hanging it
READY_TIMEOUT = 60.0  # two shared cores start seven Python processes at once
STOP_TIMEOUT = 10.0


# --- the servers of the whole run --------------------------------------------------------


@dataclass(frozen=True)
class Servers:
    nats_url: str
    database_url: str
    scratch: Path  # every scenario's folders live here; removed at the end
    nats_pid: int | None
    pg_pid: int | None


@contextmanager
def servers() -> Iterator[Servers]:
    scratch = Path(tempfile.mkdtemp(prefix="tgdl-bench-"))
    nats_server = pg = None
    try:
        nats_server = start_nats(scratch / "nats", max_store="1TB")
        pg = start_postgres(scratch / "pg")
        yield Servers(nats_server.url, pg.url, scratch, nats_server.process.pid,
                      _postmaster_pid(pg))
    finally:
        if nats_server:
            nats_server.stop()
        if pg:
            pg.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def _postmaster_pid(pg: object) -> int | None:
    from pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(pg.server.pgdata)  # type: ignore[attr-defined]
    return info.pid if info else None


# --- processes ---------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    def cpu(self) -> float:
        """CPU seconds so far (user + system)."""
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(self.popen.pid).cpu_times()
            return t.user + t.system
        return 0.0

    def rss(self, peak: bool = False) -> int:
        """Resident bytes now, or the peak of the process's life (VmHWM)."""
        key = "VmHWM:" if peak else "VmRSS:"
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"{self.name}: no {key} in /proc")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> None:
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


def spawn(name: str, args: Sequence[str], env: dict[str, str], folder: Path) -> Proc:
    log = folder / f"{name}.log"
    with log.open("ab") as out:
        popen = subprocess.Popen([sys.executable, *args], env=env, stdout=out,
                                 stderr=subprocess.STDOUT, cwd=folder,
                                 preexec_fn=die_with_parent())
    return Proc(name, popen, log)


MACHINE = "machine"  # in cpu(): every process of the machine, this bench's and others'


def machine_cpu() -> float:
    """CPU seconds the whole machine has been busy (all cores, every process: on a shared
    machine, this bench's processes and everyone else's), from /proc/stat."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    return 0.0


def ours(cpu: dict[str, float]) -> float:
    """The CPU of this bench's processes in a `cpu()`-shaped dict (the machine left out)."""
    return sum(v for k, v in cpu.items() if k != MACHINE)


def tree_cpu(pid: int | None) -> float:
    """CPU seconds of a process and its children (PostgreSQL's backends), those alive."""
    if not pid:  # a server this bench did not start
        return 0.0
    total = 0.0
    with contextlib.suppress(psutil.Error):
        parent = psutil.Process(pid)
        for p in [parent, *parent.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
    return total


# --- one scenario's deployment -----------------------------------------------------------


@dataclass
class Sim:
    bandwidth: int = 4_000_000  # the simulated Telegram's defaults
    latency: float = 0.05


INSTANT = Sim(bandwidth=0, latency=0.0)


@dataclass
class Started:
    batch_id: str
    ids: list[int]
    at: float  # perf_counter when the start request was sent


@dataclass
class BatchEnds:
    """When each batch's `BatchFinished` was appended, seen on a core subscription to the
    events' subjects (`on_event`): the moment it exists, without polling the log."""

    names: Names
    within: float = BATCH_TIMEOUT  # seconds: a stuck batch ends the run instead of hanging
    _at: dict[str, float] = field(default_factory=dict)
    _seen: dict[str, asyncio.Event] = field(default_factory=dict)

    def _event(self, batch_id: str) -> asyncio.Event:
        return self._seen.setdefault(batch_id, asyncio.Event())

    async def on_event(self, msg: Msg) -> None:
        if BatchFinished.__name__ in types_in(msg.headers):
            # The subject is the batch events subject of some id: strip the prefix.
            batch_id = msg.subject.removeprefix(self.names.batch_events("x")[:-1])
            self._at.setdefault(batch_id, time.perf_counter())
            self._event(batch_id).set()

    async def wait(self, batch_id: str) -> float:
        """perf_counter when the batch's BatchFinished was appended."""
        await asyncio.wait_for(self._event(batch_id).wait(), self.within)
        return self._at[batch_id]


@dataclass
class Stack:
    servers: Servers
    folder: Path
    env: dict[str, str]
    names: Names
    schema: str
    media: Path
    sim_url: str
    sizes: list[int]  # message i has sizes[i - 1] bytes
    nc: NATS
    http: httpx.AsyncClient
    projector_metrics: str  # the projector's Prometheus endpoint
    procs: dict[str, Proc] = field(default_factory=dict)
    ends: BatchEnds = field(init=False)

    def __post_init__(self) -> None:
        self.ends = BatchEnds(self.names)

    # --- driving batches ---------------------------------------------------------------

    async def start(self, ids: Sequence[int], max_concurrent: int) -> Started:
        """Through the HTTP API, as a user's client."""
        at = time.perf_counter()
        r = await self.http.post("/api/media/batch-download", json={
            "message_ids": list(ids), "max_concurrent": max_concurrent, "force": False})
        body = r.json()
        if r.status_code != 200 or len(body["started_downloads"]) != len(ids):
            raise RuntimeError(f"start refused or partial: {r.status_code} {r.text[:300]}")
        return Started(body["batch_id"], list(ids), at)

    async def start_command(self, ids: Sequence[int], max_concurrent: int) -> Started:
        """Straight to the orchestrator over NATS request/reply (no gateway hop)."""
        at = time.perf_counter()
        command = StartBatch(message_ids=list(ids), max_concurrent=max_concurrent)
        msg = await self.nc.request(self.names.cmd_batch_start,
                                    command.model_dump_json().encode(), timeout=30)
        reply = CommandReply.model_validate_json(msg.data)
        if reply.ok is None or not hasattr(reply.ok, "batch_id"):
            raise RuntimeError(f"start refused: {reply.rejected}")
        return Started(reply.ok.batch_id, list(ids), at)

    async def finished(self, started: Started) -> float:
        """perf_counter when BatchFinished was appended (seen on the stream)."""
        return await self.ends.wait(started.batch_id)

    async def check(self, started: Started) -> list:
        """The log ends with BatchFinished, every file completed at its size on disk;
        returns the batch's events."""
        log = EventLog(self.nc.jetstream(), self.names)
        deadline = time.monotonic() + 5
        # A core subscriber can see an append a moment before the stream serves it.
        while True:
            events, _ = await log.load(started.batch_id)
            if (events and isinstance(events[-1], BatchFinished)) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        done = [e for e in events if isinstance(e, FileCompleted)]
        if not isinstance(events[-1], BatchFinished) or len(done) != len(started.ids):
            raise RuntimeError(f"{started.batch_id}: {len(done)} of {len(started.ids)} "
                               f"files completed; log: {[e.type for e in events]}")
        for e in done:
            size = await asyncio.to_thread(os.path.getsize, e.file_path)
            if size != self.sizes[e.message_id - 1]:
                raise RuntimeError(f"{started.batch_id}: wrong size on disk: {e.file_path}")
        return events

    async def until_visible(self, started: Started) -> float:
        """perf_counter when the gateway's status first said finished."""
        deadline = time.monotonic() + BATCH_TIMEOUT
        while time.monotonic() < deadline:
            r = await self.http.get(f"/api/media/batch-status/{started.batch_id}")
            if r.status_code == 200 and r.json().get("finished"):
                return time.perf_counter()
            await asyncio.sleep(0.01)
        raise TimeoutError(f"the read model never showed {started.batch_id} finished")

    # --- what the processes cost -------------------------------------------------------
    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of every process involved, the servers included."""
        seconds = {name: p.cpu() for name, p in self.procs.items()}
        seconds["nats-server"] = tree_cpu(self.servers.nats_pid)
        seconds["postgres"] = tree_cpu(self.servers.pg_pid)
        seconds["bench"] = time.process_time()  # the client side: this process
        seconds[MACHINE] = machine_cpu()
        return seconds

    async def row_writes(self) -> dict[str, int]:
        """Rows inserted, updated or deleted in each table of this schema so far, as
        PostgreSQL's cumulative statistics count them (a backend reports them at most
        once a second, and when it exits)."""
        conn = await db_connect(self.servers.database_url, self.schema)
        try:
            rows = await conn.fetch(
                "SELECT relname, n_tup_ins + n_tup_upd + n_tup_del AS n "
                "FROM pg_stat_user_tables WHERE schemaname = $1", self.schema)
            return {r["relname"]: int(r["n"]) for r in rows}
        finally:
            await conn.close()

    async def progress_rows(self) -> int:
        """Job rows the projector has written from progress reports so far."""
        text = (await self.http.get(self.projector_metrics)).text
        return sum(int(sample.value) for family in text_string_to_metric_families(text)
                   if family.name == "tgdl_projector_progress_rows"
                   for sample in family.samples if sample.name.endswith("_total"))

    async def settled_row_writes(self, within: float = 15.0) -> dict[str, int]:
        """row_writes once it has stopped moving (two equal reads 1.2 s apart)."""
        deadline = time.monotonic() + within
        last = await self.row_writes()
        while time.monotonic() < deadline:
            await asyncio.sleep(1.2)
            now = await self.row_writes()
            if now == last:
                return now
            last = now
        return last

    def stop(self, name: str) -> None:
        proc = self.procs[name]
        proc.stop()
        proc.wait(STOP_TIMEOUT)


def file_seconds(events: Sequence) -> float:
    """Seconds each file of a batch held its permit (granted -> completed), summed."""
    granted = {e.message_id: e.at for e in events if isinstance(e, PermitGranted)}
    return sum((e.at - granted[e.message_id]).total_seconds()
               for e in events if isinstance(e, FileCompleted) and e.message_id in granted)


def _service_env(servers: Servers, token: str, media: Path, sim_url: str,
                 http_port: int, extra: dict[str, str]) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TGDL_")}
    return {
        **base,
        "TGDL_NATS_URL": servers.nats_url,
        "TGDL_DATABASE_URL": servers.database_url,
        "TGDL_NAMESPACE": f"b{token}",
        "TGDL_DB_SCHEMA": f"b_{token}",
        "TGDL_MEDIA_ROOT": str(media),
        "TGDL_TELEGRAM": "sim",
        "TGDL_SIM_URL": sim_url,
        "TGDL_HTTP_HOST": "127.0.0.1",
        "TGDL_HTTP_PORT": str(http_port),
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


async def _until(what: str, check, procs: dict[str, Proc], within: float = READY_TIMEOUT,
                 every: float = 0.1):
    deadline = time.monotonic() + within
    while True:
        for p in procs.values():
            if p.popen.poll() is not None:
                raise RuntimeError(f"{p.name} exited ({p.popen.returncode}):\n"
                                   f"{p.log.read_text(errors='replace')[-3000:]}")
        with contextlib.suppress(Exception):
            result = await check()
            if result:
                return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {within:.0f} s")
        await asyncio.sleep(every)


@asynccontextmanager
async def stack(servers: Servers, sizes: Sequence[int], sim: Sim | None = None,
                downloaders: int = 2, extra: dict[str, str] | None = None
                ) -> AsyncIterator[Stack]:
    """A deployment as `tgdl run` starts it, over `sizes` (message i has sizes[i-1])."""
    sim = sim or Sim()
    token = uuid.uuid4().hex[:10]
    folder = servers.scratch / f"stack-{token}"
    media = folder / "media"
    media.mkdir(parents=True)
    (folder / "sizes.json").write_text(json.dumps(list(sizes)))
    sim_port, http_port, projector_metrics = free_port(), free_port(), free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    env = _service_env(servers, token, media, sim_url, http_port, extra or {})
    procs: dict[str, Proc] = {}
    try:
        procs["simtelegram"] = spawn(
            "simtelegram", [str(HERE / "simproc.py"), str(folder / "sizes.json")],
            {**env, "TGDL_SIM_PORT": str(sim_port), "TGDL_SIM_BANDWIDTH": str(sim.bandwidth),
             "TGDL_SIM_LATENCY": str(sim.latency)}, folder)
        await prepare(settings_from(CommonSettings, env))  # what `tgdl migrate` does
        entries = await _until("the simulated Telegram",
                               lambda: sim_client.fetch_catalog(sim_url), procs)
        conn = await db_connect(servers.database_url, f"b_{token}")
        try:
            await catalog_db.upsert(conn, entries)
        finally:
            await conn.close()
        for name in ("orchestrator", "projector", "gateway"):
            procs[name] = spawn(name, ["-m", f"tgdl.{name}"], {**env, **(
                {"TGDL_METRICS_PORT": str(projector_metrics)} if name == "projector" else {})},
                folder)
        for i in range(1, downloaders + 1):
            procs[f"downloader-{i}"] = spawn(f"downloader-{i}", ["-m", "tgdl.downloader"],
                                             {**env, "TGDL_REPLICA": f"downloader-{i}"},
                                             folder)
        nc = await nats.connect(servers.nats_url, name="tgdl-bench")
        http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", timeout=30)
        try:
            s = Stack(servers, folder, env, Names(f"b{token}"), f"b_{token}", media, sim_url,
                      list(sizes), nc, http, f"http://127.0.0.1:{projector_metrics}/metrics",
                      procs)
            await nc.subscribe(s.names.all_batch_events, cb=s.ends.on_event)
            await nc.flush()
            await _ready(s, downloaders)
            yield s
        finally:
            await http.aclose()
            await nc.drain()
    finally:
        for p in procs.values():
            p.stop()
        for p in procs.values():
            p.wait(STOP_TIMEOUT)
        if sys.exc_info()[1] is not None:
            for p in procs.values():
                if p.log.exists() and p.popen.returncode not in (0, -signal.SIGTERM):
                    print(f"----- {p.name} (exit {p.popen.returncode}) -----\n"
                          f"{p.log.read_text(errors='replace')[-3000:]}", file=sys.stderr)
        shutil.rmtree(folder, ignore_errors=True)


async def _ready(s: Stack, downloaders: int) -> None:
    """The gateway answers, the orchestrator serves, every downloader pulls, the projector
    follows the events."""
    async def gateway() -> bool:
        return (await s.http.get("/healthz")).status_code == 200

    async def orchestrator() -> bool:
        r = await s.http.post("/api/media/batch-cancel/probe_ready")
        return r.status_code == 404  # answered by the orchestrator, not "unavailable"

    js = s.nc.jetstream()

    async def pulling() -> bool:
        info = await js.consumer_info(s.names.jobs_stream, s.names.downloader_consumer)
        return info.num_waiting >= downloaders

    async def projecting() -> bool:
        return (await js.stream_info(s.names.events_stream)).state.consumer_count >= 1

    for what, check in (("gateway", gateway), ("orchestrator", orchestrator),
                        ("downloaders", pulling), ("projector", projecting)):
        await _until(what, check, s.procs)
