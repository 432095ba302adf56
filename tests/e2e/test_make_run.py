"""`tgdl run` as a user starts it (what `make run` does): embedded servers, the simulated
Telegram, every service as its own process with its own metrics; Ctrl-C stops all of it
and leaves nothing."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tgdl.launcher.embedded import free_port

START_DEADLINE = 60.0
STOP_DEADLINE = 20.0


def tgdl_command() -> list[str]:
    script = Path(sys.executable).parent / "tgdl"
    return [str(script)] if script.exists() else [sys.executable, "-m", "tgdl.launcher"]


def clean_env(**settings: str) -> dict[str, str]:
    """The environment of a fresh shell: none of the developer's TGDL_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TGDL_")}
    return {**env, **settings}


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # exited, unreaped
    except psutil.NoSuchProcess:
        return True


def poll(predicate: Callable[[], Any], within: float, what: str, log: Path) -> Any:
    deadline = time.monotonic() + within
    while not (value := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not within {within:g} s; output:\n{log.read_text()[-6000:]}")
        time.sleep(0.1)
    return value


def service_modules(processes: list[psutil.Process]) -> list[str]:
    """The `python -m tgdl.<service>` modules among `processes`."""
    modules = []
    for process in processes:
        with contextlib.suppress(psutil.Error):
            argv = process.cmdline()
            modules += [argv[i + 1] for i, arg in enumerate(argv[:-1])
                        if arg == "-m" and argv[i + 1].startswith("tgdl.")]
    return modules


def scrape_every_process(listed: Path, output: str, log: Path) -> None:
    """Each process serves its own metrics where the targets file (and the banner) says:
    every port answers, and the process behind it is the one named."""
    targets = json.loads(listed.read_text())
    replicas = [t["labels"]["replica"] for t in targets]
    assert replicas == ["gateway", "orchestrator", "projector", "catalog", "downloader-1",
                        "downloader-2"]
    addresses = [t["targets"][0] for t in targets]
    assert len(set(addresses)) == len(addresses), addresses
    own = {"gateway": "tgdl_http_request_duration_seconds",
           "orchestrator": "tgdl_orchestrator_permits_granted",
           "projector": "tgdl_projector_messages_applied",
           "catalog": "tgdl_catalog_rule_batches_started",
           "downloader": "tgdl_downloader_downloads_completed"}
    for target in targets:
        url = f"http://{target['targets'][0]}/metrics"
        assert url in output, f"{url} not announced"
        replica, service = target["labels"]["replica"], target["labels"]["service"]

        def answers(url: str = url) -> str | None:
            with contextlib.suppress(httpx.HTTPError):
                r = httpx.get(url, timeout=2)
                return r.text if r.status_code == 200 else None
            return None
        text = poll(answers, 20, f"{replica}'s metrics on {url}", log)
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert own[service] in families, f"{replica} on {url}: {sorted(families)}"
        if service != "gateway":
            [info] = families["tgdl_service_info"].samples
            assert info.labels["service"] == service
            assert service != "downloader" or info.labels["replica"] == replica


def postmaster_pid(pgdata: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int((pgdata / "postmaster.pid").read_text().split()[0])
    return None


@pytest.mark.e2e
def test_tgdl_run_serves_the_demo_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    home = tmp_path / ".tgdl"
    log = tmp_path / "tgdl-run.log"
    base = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        tgdl = subprocess.Popen(
            [*tgdl_command(), "run"],
            env=clean_env(TGDL_HOME=str(home), TGDL_HTTP_PORT=str(port)),
            cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a shell's foreground job
        )
    descendants: list[psutil.Process] = []
    try:
        def healthy() -> bool:
            if tgdl.poll() is not None:
                pytest.fail(f"tgdl run exited with {tgdl.returncode}:\n{log.read_text()[-6000:]}")
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
            return False

        poll(healthy, START_DEADLINE, "GET /healthz answering 200", log)
        descendants = psutil.Process(tgdl.pid).children(recursive=True)
        postgres = postmaster_pid(home / "pg")

        messages = httpx.get(f"{base}/api/messages", timeout=10)
        assert messages.status_code == 200, messages.text
        assert messages.json()["total"] >= 200
        assert messages.json()["items"]

        # Started means announced: the user is told where to click and what is running.
        poll(lambda: f"{base}/docs" in log.read_text(), 10, "the ready banner", log)
        output = log.read_text()
        assert f"open {base}/" in output
        assert "Using the simulated Telegram (" in output
        assert sorted(service_modules(descendants)) == [
            "tgdl.catalog", "tgdl.downloader", "tgdl.downloader", "tgdl.gateway",
            "tgdl.orchestrator", "tgdl.projector", "tgdl.simtelegram",
        ]  # each service its own OS process, two downloader replicas by default
        scrape_every_process(home / "metrics-targets.json", output, log)

        # The client commands find this gateway (not on the default port) by themselves.
        listed = subprocess.run([*tgdl_command(), "batches", "--json"], cwd=tmp_path,
                                env=clean_env(TGDL_HOME=str(home)), capture_output=True,
                                text=True, timeout=60)
        assert listed.returncode == 0, listed.stdout + listed.stderr
        assert "items" in json.loads(listed.stdout)

        os.killpg(tgdl.pid, signal.SIGINT)  # Ctrl-C at the terminal
        assert tgdl.wait(STOP_DEADLINE) == 0, log.read_text()[-6000:]

        left = [p.pid for p in descendants if not gone(p.pid)]
        assert not left, f"processes left behind: {left}\n{log.read_text()[-6000:]}"
        if postgres is not None:
            assert gone(postgres), "the embedded PostgreSQL is still running"
        assert "Stopped" in log.read_text()
        assert not (home / "metrics-targets.json").exists()  # nothing left to scrape
        assert not (home / "gateway.json").exists()
    finally:
        if tgdl.poll() is None:  # the test failed while it ran: stop it as a user would
            with contextlib.suppress(psutil.Error):
                descendants += psutil.Process(tgdl.pid).children(recursive=True)
            os.killpg(tgdl.pid, signal.SIGINT)
            try:
                tgdl.wait(STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                os.killpg(tgdl.pid, signal.SIGKILL)
                tgdl.wait()
        for process in descendants:
            with contextlib.suppress(psutil.Error):
                process.kill()


@pytest.mark.e2e
def test_tgdl_run_whose_output_reader_went_away_still_stops_on_sigterm(tmp_path: Path) -> None:
    """`tgdl run | head`: once head has its lines the pipe is closed, and every line
    tgdl writes after that (its "Stopping" first) fails. It must still stop, and cleanly."""
    port = free_port()
    tgdl = subprocess.Popen(
        [*tgdl_command(), "run"],
        env=clean_env(TGDL_HOME=str(tmp_path / ".tgdl"), TGDL_HTTP_PORT=str(port)),
        cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, start_new_session=True,
    )
    descendants: list[psutil.Process] = []
    try:
        assert tgdl.stdout is not None
        deadline = time.monotonic() + START_DEADLINE
        for raw in tgdl.stdout:  # what head would read, up to the ready banner
            if b"Press Ctrl-C to stop" in raw or time.monotonic() > deadline:
                break
        descendants = psutil.Process(tgdl.pid).children(recursive=True)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        tgdl.stdout.close()  # the reader goes away

        os.killpg(tgdl.pid, signal.SIGTERM)
        assert tgdl.wait(STOP_DEADLINE) == 0
        left = [p.pid for p in descendants if not gone(p.pid)]
        assert not left, f"processes left behind: {left}"
    finally:
        if tgdl.poll() is None:
            with contextlib.suppress(psutil.Error):
                descendants += psutil.Process(tgdl.pid).children(recursive=True)
            os.killpg(tgdl.pid, signal.SIGKILL)
            tgdl.wait()
        for process in descendants:
            with contextlib.suppress(psutil.Error):
                process.kill()
