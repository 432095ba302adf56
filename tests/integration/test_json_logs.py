"""TGDL_LOG_FORMAT=json: one JSON object per line, naming the service and the batch,
message and job a line concerns."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys

import httpx
from waiting import until

from tgdl.contracts.config import CommonSettings
from tgdl.launcher.embedded import free_port
from tgdl.launcher.plan import settings_from
from tgdl.launcher.prepare import prepare
from tgdl.runtime.jsonlog import JsonFormatter, ids_in, json_logs


def record(message: str, *args, exc_info=None, **extra) -> logging.LogRecord:
    r = logging.LogRecord("tgdl.downloader", logging.INFO, __file__, 1, message, args, exc_info)
    r.__dict__.update(extra)
    return r


def test_a_line_names_service_replica_and_the_ids_in_its_message():
    formatter = JsonFormatter(service="downloader", replica="downloader-2")
    line = json.loads(formatter.format(record("job %s completed", "batch_1f0c2a9e:12:2")))
    assert line["message"] == "job batch_1f0c2a9e:12:2 completed"
    assert (line["service"], line["replica"], line["level"], line["logger"]) == (
        "downloader", "downloader-2", "info", "tgdl.downloader")
    assert (line["batch_id"], line["message_id"], line["job_id"]) == (
        "batch_1f0c2a9e", 12, "batch_1f0c2a9e:12:2")
    assert line["time"].endswith("Z")


def test_ids_from_the_log_call_win_and_lines_without_ids_have_none():
    formatter = JsonFormatter(service="orchestrator", replica="")
    line = json.loads(formatter.format(record("granted", batch_id="single_00ff00ff",
                                              message_id=7)))
    assert (line["batch_id"], line["message_id"]) == ("single_00ff00ff", 7)
    assert "job_id" not in line and "replica" not in line
    assert ids_in("recovered 3 open batches") == {}
    assert ids_in("batch batch_0a0b0c0d started") == {"batch_id": "batch_0a0b0c0d"}


def test_an_exception_stays_inside_its_line():
    try:
        raise ValueError("boom")
    except ValueError:
        line = JsonFormatter(service="x").format(record("failed", exc_info=sys.exc_info()))
    assert "\n" not in line and "ValueError: boom" in json.loads(line)["exception"]


def test_the_setting_is_json_or_text():
    assert json_logs({"TGDL_LOG_FORMAT": "JSON"}) and not json_logs({})
    assert not json_logs({"TGDL_LOG_FORMAT": "text"})


def spawn_gateway(env: dict[str, str], log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tgdl.gateway"], cwd=log.parent,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)


async def test_a_service_process_writes_only_json_lines(servers, isolation, tmp_path):
    # The gateway on the session's servers: uvicorn's lines, its access log included.
    env = isolation.env(servers)
    await prepare(settings_from(CommonSettings, env))
    port = free_port()
    log = tmp_path / "gateway.log"
    process = spawn_gateway(
        {**os.environ, **env, "TGDL_LOG_FORMAT": "json", "TGDL_HTTP_PORT": str(port)}, log)
    try:
        async def healthy():
            try:
                async with httpx.AsyncClient() as http:
                    return (await http.get(f"http://127.0.0.1:{port}/healthz")).is_success
            except httpx.HTTPError:
                return False
        await until(healthy, 30, what="gateway answering")
        await until(lambda: "/healthz" in log.read_text(), 10, what="access log line")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        finally:
            if process.poll() is None:
                process.kill()
    lines = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
    assert lines and all(x["service"] == "gateway" for x in lines)
    assert any(x["logger"] == "uvicorn.access" and "/healthz" in x["message"] for x in lines)
