"""TGDL_LOG_FORMAT=json: one JSON object per line, naming the service and the batch,
message and job a line concerns."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

from tgdl.launcher.embedded import free_port
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


def test_a_service_process_writes_only_json_lines(tmp_path):
    # The gateway with an unreachable PostgreSQL: uvicorn's lines and the failure alike.
    env = {**os.environ, "TGDL_LOG_FORMAT": "json", "TGDL_HTTP_PORT": str(free_port()),
           "TGDL_DATABASE_URL": f"postgresql://nobody@127.0.0.1:{free_port()}/none"}
    done = subprocess.run([sys.executable, "-m", "tgdl.gateway"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    lines = [json.loads(x) for x in (done.stdout + done.stderr).splitlines() if x.strip()]
    assert lines and all(x["service"] == "gateway" for x in lines)
    assert any(x["level"] == "error" and x["logger"] == "uvicorn.error" for x in lines)
