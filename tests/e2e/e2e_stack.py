"""The e2e stack: every service as its own OS process, on the session's real servers.

The `stack` fixture (conftest.py) starts the simulated Telegram, the orchestrator, the
projector, the catalog service, the gateway and two downloader replicas for one test (its
own namespace, schema and media folder). `Stack` offers the few verbs the tests speak in.
Service logs land in the test's tmp folder and are printed when a test fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from waiting import until

from tgdl.contracts.subjects import Names
from tgdl.launcher.embedded import free_port
from tgdl.simtelegram import client as sim_client
from tgdl.simtelegram.catalog import demo_catalog
from tgdl.simtelegram.settings import SimSettings

# Small files and a modest per-connection bandwidth: downloads last long enough to be seen
# in flight and short enough for the suite to stay quick.
SIM_ENV = {
    "TGDL_SIM_COUNT": "80",
    "TGDL_SIM_MIN_SIZE": "300000",
    "TGDL_SIM_MAX_SIZE": "2500000",
    "TGDL_SIM_BANDWIDTH": "1200000",
    "TGDL_SIM_LATENCY": "0.02",
}


@dataclass
class Service:
    name: str
    process: subprocess.Popen
    log: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@dataclass
class Stack:
    env: dict[str, str]
    workdir: Path
    media_root: Path
    names: Names
    database_url: str
    schema: str
    sim_url: str = ""
    http: httpx.AsyncClient | None = None
    services: dict[str, Service] = field(default_factory=dict)
    metrics_ports: dict[str, int] = field(default_factory=dict)

    # --- processes ----------------------------------------------------------------------
    def spawn(self, name: str, module: str, **extra: str) -> Service:
        """Start `module` as process `name`, with a metrics port of its own."""
        log = self.workdir / f"{name}.log"
        self.metrics_ports[name] = free_port()
        env = {**os.environ, **self.env, "TGDL_METRICS_PORT": str(self.metrics_ports[name]),
               **extra}
        process = subprocess.Popen(
            [sys.executable, "-m", module], env=env, stdout=log.open("ab"),
            stderr=subprocess.STDOUT, cwd=self.workdir,
        )
        service = Service(name, process, log)
        self.services[name] = service
        return service

    def exited(self) -> dict[str, int]:
        """The services whose process has ended, with its exit code."""
        return {name: code for name, s in self.services.items()
                if (code := s.process.poll()) is not None}

    def kill(self, name: str) -> None:
        self.services[name].stop(signal.SIGKILL)

    def logs(self) -> str:
        return "\n".join(
            f"----- {s.name} -----\n{s.log.read_text(errors='replace')[-4000:]}"
            for s in self.services.values() if s.log.exists()
        )

    def stop_all(self) -> None:
        for service in reversed(list(self.services.values())):
            service.stop()

    # --- the simulated Telegram ---------------------------------------------------------
    def sim_messages(self):
        settings = SimSettings(**{k[len("TGDL_SIM_"):].lower(): v for k, v in SIM_ENV.items()})
        return demo_catalog(settings.count, settings.min_size, settings.max_size, settings.seed,
                            forwards=settings.forwards)

    def media_ids(self, n: int, min_size: int = 0) -> list[int]:
        """`n` ids of healthy messages (media, not deleted, reachable), each its own file
        (no forwards), in the order a batch of them is granted: the largest first."""
        found = [m for m in self.sim_messages()
                 if m.media_kind is not None and not m.deleted and not m.forbidden
                 and (m.size or 0) >= min_size and m.file_id == m.message_id]
        assert len(found) >= n, f"the test catalog has only {len(found)} such messages"
        return [m.message_id for m in sorted(found[:n], key=lambda m: -(m.size or 0))]

    async def sim_stats(self) -> dict[str, Any]:
        return await sim_client.stats(self.sim_url)

    async def until_serving(self, count: int, within: float = 10.0) -> dict[str, Any]:
        return await sim_client.until_serving(self.sim_url, count, within)

    # --- metrics ------------------------------------------------------------------------
    async def metrics(self, name: str) -> Metrics:
        """Process `name`'s /metrics (the gateway's on its HTTP port); empty while it
        does not answer."""
        url = (f"{self.http.base_url}/metrics" if name == "gateway"
               else f"http://127.0.0.1:{self.metrics_ports[name]}/metrics")
        try:
            async with httpx.AsyncClient(timeout=5) as http:
                r = await http.get(url)
        except httpx.HTTPError:
            return Metrics({})
        return Metrics.parse(r.text) if r.status_code == 200 else Metrics({})

    async def summed(self, prefix: str, sample: str, **labels: str) -> float:
        """`sample` (with `labels`) summed over the processes whose name starts with
        `prefix` (e.g. every downloader replica)."""
        total = 0.0
        for name in [n for n in self.services if n.startswith(prefix)]:
            total += (await self.metrics(name)).value(sample, **labels)
        return total

    # --- the HTTP API -------------------------------------------------------------------
    async def start_batch(self, ids: list[int], max_concurrent: int = 3,
                          force: bool = False, **extra) -> dict[str, Any]:
        r = await self.http.post("/api/media/batch-download", json={
            "message_ids": ids, "max_concurrent": max_concurrent, "force": force, **extra})
        assert r.status_code == 200, r.text
        return r.json()

    async def status(self, batch_id: str) -> dict[str, Any]:
        r = await self.http.get(f"/api/media/batch-status/{batch_id}")
        assert r.status_code in (200, 404), r.text
        return r.json() if r.status_code == 200 else {}

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        r = await self.http.post(f"/api/media/batch-cancel/{batch_id}")
        assert r.status_code == 200, r.text
        return r.json()

    async def until_finished(self, batch_id: str, within: float = 60.0) -> dict[str, Any]:
        async def finished():
            body = await self.status(batch_id)
            return body if body.get("finished") else None
        return await until(finished, within, every=0.2, what=f"{batch_id} finished")




@dataclass(frozen=True)
class Metrics:
    """Samples of one scrape: (name, sorted labels) -> value."""

    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]

    @classmethod
    def parse(cls, text: str) -> Metrics:
        return cls({(s.name, tuple(sorted(s.labels.items()))): s.value
                    for family in text_string_to_metric_families(text)
                    for s in family.samples})

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples named `name` that carry `labels` (0 when none)."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and want <= set(ls))

    def names(self) -> set[str]:
        return {n for n, _ in self.samples}
