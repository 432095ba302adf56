"""TGDL_METRICS_PORT: a NATS service (here the real projector and orchestrator, on the
session's servers) serves its own Prometheus metrics, and a port it cannot have is a
warning, not a service that fails to start."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
from waiting import until

from tgdl.contracts.config import CommonSettings
from tgdl.launcher.embedded import free_port
from tgdl.launcher.plan import settings_from
from tgdl.launcher.prepare import prepare


def spawn(module: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", module], env={**os.environ, **env},
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(20)
    finally:
        if process.poll() is None:
            process.kill()


async def test_a_service_serves_its_metrics_on_its_own_port(servers, isolation, tmp_path):
    env = isolation.env(servers)
    await prepare(settings_from(CommonSettings, env))
    port = free_port()
    process = spawn("tgdl.projector", {**env, "TGDL_METRICS_PORT": str(port),
                                       "TGDL_REPLICA": "projector-a"}, tmp_path / "p.log")
    try:
        async def scraped():
            try:
                async with httpx.AsyncClient() as http:
                    r = await http.get(f"http://127.0.0.1:{port}/metrics")
                return r.text if r.status_code == 200 else None
            except httpx.HTTPError:
                return None
        text = await until(scraped, 30, what="the projector's /metrics")
    finally:
        code = stop(process)
    assert 'tgdl_service_info{replica="projector-a",service="projector"} 1.0' in text
    assert "process_resident_memory_bytes" in text
    assert code == 0, (tmp_path / "p.log").read_text()


async def test_a_port_in_use_is_a_warning_and_the_service_runs(servers, isolation, tmp_path):
    env = isolation.env(servers)
    await prepare(settings_from(CommonSettings, env))
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    log = tmp_path / "o.log"
    process = spawn("tgdl.orchestrator",
                    {**env, "TGDL_METRICS_PORT": str(taken.getsockname()[1])}, log)
    try:
        await until(lambda: "recovered" in log.read_text(), 30, what="orchestrator running")
        assert "metrics not served on 127.0.0.1" in log.read_text()
    finally:
        taken.close()
        code = stop(process)
    assert code == 0, log.read_text()
