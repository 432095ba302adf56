"""`TGDL_LOG_FORMAT=json`: one JSON object per log line, for log collectors.

Each line names the service (and the replica, for downloaders), and the batch, message and
job it concerns where it concerns one: taken from the log call's `extra` when given, else
from the ids in the message (job ids are `<batch_id>:<message_id>[:<grant>]`, batch ids
`batch_<hex>` or `single_<hex>`), so every existing log line carries them without change.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from datetime import UTC, datetime
from typing import Any

_IDS = re.compile(r"\b((?:batch|single)_[0-9a-f]{8})(?::(\d+)(?::\d+)?)?\b")
ID_FIELDS = ("batch_id", "message_id", "job_id")


def json_logs(env: dict[str, str] | None = None) -> bool:
    return (env if env is not None else os.environ).get(
        "TGDL_LOG_FORMAT", "").strip().lower() == "json"


def service_name() -> str:
    """`gateway` for `python -m tgdl.gateway`, else the program's name."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name.startswith("tgdl."):
        return spec.name.split(".")[1]
    return os.path.basename(sys.argv[0] or "python").removesuffix(".py")


def ids_in(text: str) -> dict[str, Any]:
    """The batch, message and job a log message names, e.g. `job batch_1f0c2a9e:12 ...`."""
    found = _IDS.search(text)
    if not found:
        return {}
    ids: dict[str, Any] = {"batch_id": found[1]}
    if found[2]:
        ids.update(message_id=int(found[2]), job_id=found[0])
    return ids


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str | None = None, replica: str | None = None) -> None:
        super().__init__()
        self.service = service or service_name()
        self.replica = replica if replica is not None else os.environ.get("TGDL_REPLICA")

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "message": message,
        }
        if self.replica:
            line["replica"] = self.replica
        found = ids_in(message)
        for key in ID_FIELDS:
            value = getattr(record, key, None)
            value = found.get(key) if value is None else value
            if value is not None:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)
