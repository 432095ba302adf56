"""`tgdl run` keeps its embedded servers up: nats-server and PostgreSQL killed with
SIGKILL mid-batch are restarted (one line each), the services reconnect by themselves and
the batch completes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import httpx
import psutil
import pytest
from test_make_run import clean_env, poll, postmaster_pid, tgdl_command

from tgdl.launcher.embedded import free_port

START_DEADLINE = 60.0
RESTART_DEADLINE = 30.0
FINISH_DEADLINE = 90.0


def nats_server_child(tgdl_pid: int) -> psutil.Process:
    """nats-server among the launcher's children, found by parent id."""
    found = [p for p in psutil.Process(tgdl_pid).children()
             if "nats-server" in " ".join(p.cmdline())]
    assert len(found) == 1, found
    return found[0]


@pytest.mark.e2e
def test_killed_servers_come_back_and_the_batch_completes(tmp_path: Path) -> None:
    port = free_port()
    home = tmp_path / ".tgdl"
    log = tmp_path / "tgdl-run.log"
    base = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        tgdl = subprocess.Popen(
            [*tgdl_command(), "run"],
            env=clean_env(TGDL_HOME=str(home), TGDL_HTTP_PORT=str(port),
                          TGDL_SIM_BANDWIDTH="8000000", TGDL_SIM_LATENCY="0.01"),
            cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        def answers(path: str) -> httpx.Response | None:
            if tgdl.poll() is not None:
                pytest.fail(f"tgdl run exited with {tgdl.returncode}:\n{log.read_text()[-6000:]}")
            with contextlib.suppress(httpx.HTTPError):
                response = httpx.get(f"{base}{path}", timeout=3)
                return response if response.status_code == 200 else None
            return None

        poll(lambda: answers("/healthz"), START_DEADLINE, "GET /healthz answering 200", log)

        def orchestrator_answers() -> bool:  # /healthz says nothing of the orchestrator
            with contextlib.suppress(httpx.HTTPError):
                probe = httpx.post(f"{base}/api/media/batch-cancel/probe_ready", timeout=3)
                return probe.status_code == 404  # its answer: no such batch
            return False

        poll(orchestrator_answers, START_DEADLINE, "the orchestrator answering", log)
        items = httpx.get(f"{base}/api/messages?media_only=true&limit=6", timeout=10).json()
        ids = [m["message_id"] for m in items["items"]]
        started = httpx.post(f"{base}/api/media/batch-download", timeout=10,
                             json={"message_ids": ids, "max_concurrent": 3})
        assert started.status_code == 200, started.text
        batch = started.json()["batch_id"]

        nats_pid = nats_server_child(tgdl.pid).pid
        os.kill(nats_pid, signal.SIGKILL)
        poll(lambda: "nats-server restarted after" in log.read_text(), RESTART_DEADLINE,
             "nats-server restarted", log)
        assert nats_server_child(tgdl.pid).pid != nats_pid

        old_postmaster = postmaster_pid(home / "pg")
        assert old_postmaster is not None
        os.kill(old_postmaster, signal.SIGKILL)
        poll(lambda: "PostgreSQL restarted after" in log.read_text(), RESTART_DEADLINE,
             "PostgreSQL restarted", log)
        assert postmaster_pid(home / "pg") not in (None, old_postmaster)

        def finished() -> dict | None:
            response = answers(f"/api/media/batch-status/{batch}")
            body = response.json() if response is not None else {}
            return body if body.get("overall_status") in ("completed", "failed",
                                                          "partially_completed") else None

        status = poll(finished, FINISH_DEADLINE, "the batch finished", log)
        assert status["overall_status"] == "completed", status
        assert status["completed"] == len(ids)
        media = tmp_path / "media"
        assert not list(media.rglob("*.part"))
        output = log.read_text()
        assert output.count("died unexpectedly; restarting it in") == 2, output[-6000:]
        assert "Traceback" not in output, output[-6000:]

        os.killpg(tgdl.pid, signal.SIGINT)
        assert tgdl.wait(30) == 0, log.read_text()[-6000:]
    finally:
        if tgdl.poll() is None:
            os.killpg(tgdl.pid, signal.SIGINT)
            try:
                tgdl.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(tgdl.pid, signal.SIGKILL)
                tgdl.wait()
