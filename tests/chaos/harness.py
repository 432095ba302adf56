"""The chaos harness: `tgdl run` as a user starts it (every service and server a real OS
process), a simulated Telegram of its own, batches started over HTTP, one fault injected
mid-batch, and the checks every run must pass:

- every file completed with the SHA-256 of the simulated content, no `.part` left;
- no file downloaded twice at once (the simulated Telegram sent no file more than one
  fault's re-fetch over its size, and a second writer would have corrupted the file);
- permits and the global cap never exceeded (sampled batch status; the simulated
  Telegram's own maximum of files served at once);
- the stall: the longest time, after the fault, in which Telegram sent no byte while
  files were still to be downloaded; and the file stall: the longest time a file the
  status showed downloading got no byte (a dead replica's file waiting for a takeover).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from tgdl.launcher.embedded import free_port
from tgdl.simtelegram import client as sim_client
from tgdl.simtelegram.catalog import demo_catalog
from tgdl.simtelegram.content import expected_sha256

GLOBAL_CAP = 8
SIM = {"TGDL_SIM_COUNT": "120", "TGDL_SIM_MIN_SIZE": "400000", "TGDL_SIM_MAX_SIZE": "3000000",
       "TGDL_SIM_BANDWIDTH": "1500000", "TGDL_SIM_LATENCY": "0.01", "TGDL_SIM_SEED": "7"}
START_DEADLINE = 90.0


def tgdl_command() -> list[str]:
    script = Path(sys.executable).parent / "tgdl"
    return [str(script)] if script.exists() else [sys.executable, "-m", "tgdl.launcher"]


def clean_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TGDL_")}
    return {**env, **settings}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


async def until(predicate: Callable[[], Any], within: float, what: str,
                every: float = 0.1) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {within:g} s")
        await asyncio.sleep(every)


@dataclass
class Sim:
    """The simulated Telegram, outside `tgdl run` (it is Telegram, not a tgdl service)."""

    workdir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = clean_env(**SIM, TGDL_SIM_PORT=str(self.port))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tgdl.simtelegram"], env=env, stdin=subprocess.DEVNULL,
            stdout=(self.workdir / "sim.log").open("ab"), stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def media(self) -> dict[int, int]:
        """Healthy media messages: id -> size."""
        return {m.message_id: m.size for m in demo_catalog(
            int(SIM["TGDL_SIM_COUNT"]), int(SIM["TGDL_SIM_MIN_SIZE"]),
            int(SIM["TGDL_SIM_MAX_SIZE"]), int(SIM["TGDL_SIM_SEED"]))
            if m.media_kind is not None and not m.deleted and not m.forbidden and m.size}

    async def stats(self) -> dict[str, Any]:
        return await sim_client.stats(self.url)


@dataclass
class Tree:
    """One `tgdl run` (the whole process tree) over a data folder that outlives it."""

    workdir: Path
    sim: Sim
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    runs: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / "tgdl-run.log"

    @property
    def home(self) -> Path:
        return self.workdir / ".tgdl"

    @property
    def media_root(self) -> Path:
        return self.workdir / "media"

    def start(self) -> None:
        self.runs += 1
        env = clean_env(TGDL_HOME=str(self.home), TGDL_HTTP_PORT=str(self.port),
                        TGDL_SIM_URL=self.sim.url, TGDL_GLOBAL_CAP=str(GLOBAL_CAP),
                        **self.extra_env)
        with self.log.open("ab") as out:
            out.write(f"===== tgdl run #{self.runs} =====\n".encode())
            self.process = subprocess.Popen(
                [*tgdl_command(), "run"], env=env, cwd=self.workdir,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)

    async def until_ready(self) -> None:
        async with httpx.AsyncClient(timeout=3) as http:
            async def ready() -> bool:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise AssertionError(f"tgdl run exited: {self.tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    health = await http.get(f"{self.base}/healthz")
                    probe = await http.post(f"{self.base}/api/media/batch-cancel/probe_ready")
                    return health.status_code == 200 and probe.status_code == 404
                return False
            await until(ready, START_DEADLINE, "tgdl run ready")

    def descendants(self) -> list[psutil.Process]:
        """Everything `tgdl run` started, found by parent id (the embedded PostgreSQL's
        postmaster too: the launcher adopts it)."""
        assert self.process is not None
        with contextlib.suppress(psutil.Error):
            return psutil.Process(self.process.pid).children(recursive=True)
        return []

    def service(self, name: str) -> psutil.Process:
        """A service process by its name in `tgdl run`'s output (downloader-1, ...)."""
        for p in self.descendants():
            with contextlib.suppress(psutil.Error):
                argv = p.cmdline()
                if "-m" not in argv:
                    continue
                module = argv[argv.index("-m") + 1].removeprefix("tgdl.")
                replica = p.environ().get("TGDL_REPLICA", "")
                if name in (module, replica):
                    return p
        raise LookupError(f"no running {name}")

    def nats_server(self) -> psutil.Process:
        return next(p for p in self.descendants() if p.name() == "nats-server")

    def postmaster(self) -> psutil.Process:
        pid = int((self.home / "pg" / "postmaster.pid").read_text().split()[0])
        return psutil.Process(pid)

    def power_loss(self) -> None:
        """SIGKILL the launcher and everything under it at the same instant."""
        assert self.process is not None
        everything = [psutil.Process(self.process.pid), *self.descendants()]
        for p in everything:
            with contextlib.suppress(psutil.Error):
                p.kill()
        self.process.wait()
        psutil.wait_procs(everything, timeout=10)

    def stop(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            return self.process.wait(40)
        except subprocess.TimeoutExpired:
            self.power_loss()
            return None

    def tail(self, n: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-n:]


@dataclass
class Outcome:
    fault: str
    stall: float  # longest time without a byte from Telegram after the fault
    file_stall: float  # longest time a file shown downloading got no byte after the fault
    duration: float  # from the fault until every batch finished
    files: int
    max_serving: int


@dataclass
class Watch:
    """Samples the simulated Telegram and every batch while a scenario runs."""

    tree: Tree
    batches: dict[str, int]  # batch id -> max_concurrent
    progress_at: float = field(default_factory=time.monotonic)
    sent: int = -1
    pending: bool = True
    violations: list[str] = field(default_factory=list)
    stall: float = 0.0
    file_stall: float = 0.0  # the longest a file shown downloading got no byte
    since_fault: bool = False
    _by_id: dict[int, tuple[int, float]] = field(default_factory=dict)  # sent, changed at

    async def sample_forever(self, http: httpx.AsyncClient) -> None:
        while True:
            await self.sample(http)
            await asyncio.sleep(0.1)  # the sampling period

    async def sample(self, http: httpx.AsyncClient) -> None:
        now = time.monotonic()
        by_id: dict[int, int] = {}
        with contextlib.suppress(httpx.HTTPError):
            stats = await self.tree.sim.stats()
            by_id = stats["bytes_sent_by_id"]
            if stats["bytes_sent"] != self.sent:
                self.sent, self.progress_at = stats["bytes_sent"], now
            if stats["max_serving"] > GLOBAL_CAP:
                self.violations.append(f"{stats['max_serving']} files served at once")
        if self.since_fault and self.pending:
            self.stall = max(self.stall, now - self.progress_at)
        downloading: set[int] = set()
        for batch, cap in self.batches.items():
            with contextlib.suppress(httpx.HTTPError, ValueError):
                r = await http.get(f"/api/media/batch-status/{batch}")
                if r.status_code != 200:
                    continue
                body = r.json()
                if body["downloading"] > cap:
                    self.violations.append(f"{batch}: {body['downloading']} > {cap}")
                downloading |= {f["message_id"] for f in body["files"]
                                if f["status"] == "downloading"}
        for m in set(self._by_id) | set(by_id):
            sent = by_id.get(m, 0)
            before, changed = self._by_id.get(m, (-1, now))
            if sent != before or m not in downloading:
                self._by_id[m] = (sent, now)  # progress, or not ours to wait for
            elif self.since_fault:
                self.file_stall = max(self.file_stall, now - changed)


async def start_batch(http: httpx.AsyncClient, ids: list[int], max_concurrent: int,
                      key: str) -> str:
    """Start a batch, retrying through outages with the same Idempotency-Key."""
    async def started() -> str | None:
        with contextlib.suppress(httpx.HTTPError):
            r = await http.post("/api/media/batch-download",
                                json={"message_ids": ids, "max_concurrent": max_concurrent},
                                headers={"Idempotency-Key": key})
            if r.status_code == 200:
                return r.json()["batch_id"]
            assert r.status_code in (503, 409), r.text
        return None
    return await until(started, 60, f"batch {key} started", every=0.3)


async def run_scenario(tree: Tree, name: str, batches: list[tuple[list[int], int]],
                       fault: Callable[[], Awaitable[None]], after_bytes: int,
                       finish_within: float = 180.0) -> Outcome:
    """Start `batches`, inject `fault` once Telegram sent `after_bytes`, wait for every
    batch to finish, check everything, and measure the stall."""
    sizes = tree.sim.media()
    async with httpx.AsyncClient(base_url=tree.base, timeout=10) as http:
        ids = {}
        for i, (message_ids, cap) in enumerate(batches):
            ids[await start_batch(http, message_ids, cap, f"{name}-{i}")] = cap
        watch = Watch(tree, ids)
        sampler = asyncio.create_task(watch.sample_forever(http))
        try:
            await until(lambda: watch.sent >= after_bytes, 120, "bytes before the fault")
            faulted = time.monotonic()
            watch.since_fault = True
            await fault()
            finals: dict[str, dict] = {}

            async def all_finished() -> bool:
                for batch in ids:
                    if batch in finals:
                        continue
                    with contextlib.suppress(httpx.HTTPError, ValueError):
                        r = await http.get(f"/api/media/batch-status/{batch}")
                        if r.status_code == 200 and r.json().get("finished") \
                                and not r.json().get("stale"):
                            finals[batch] = r.json()
                return len(finals) == len(ids)
            try:
                await until(all_finished, finish_within, f"{name}: every batch finished", 0.2)
            except TimeoutError:
                raise AssertionError(f"{name}: unfinished after {finish_within} s; "
                                     f"{tree.tail()}") from None
            watch.pending = False
            duration = time.monotonic() - faulted
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        stats = await tree.sim.stats()
    files = check_files(tree, finals, sizes, stats)
    assert not watch.violations, f"{name}: limits exceeded: {watch.violations[:5]}"
    return Outcome(name, watch.stall, watch.file_stall, duration, files, stats["max_serving"])


def check_files(tree: Tree, finals: dict[str, dict], sizes: dict[int, int],
                stats: dict[str, Any]) -> int:
    checked: set[int] = set()
    for batch, final in finals.items():
        assert final["overall_status"] == "completed", f"{batch}: {final}"
        for f in final["files"]:
            m = f["message_id"]
            path = Path(f["file_path"])
            path = path if path.is_absolute() else tree.workdir / path
            if m in checked:
                continue
            assert sha256(path) == expected_sha256(m, sizes[m]), f"{path} is corrupt"
            sent = stats["bytes_sent_by_id"].get(m, 0)
            # A fault costs at most the parts in flight once more (resumed from .part); a
            # second download at the same time would add a whole copy on top of that.
            assert sent <= 2 * sizes[m], f"message {m}: {sent} bytes sent for {sizes[m]}"
            checked.add(m)
    left = list(tree.media_root.rglob("*.part"))
    assert not left, f".part files left: {left}"
    return len(checked)
