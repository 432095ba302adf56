"""A service's own metrics port: TGDL_METRICS_PORT (and TGDL_METRICS_HOST) makes a NATS
service serve Prometheus text at http://host:port/metrics: its process (CPU, memory, open
files, GC), `tgdl_service_info`, and what its code counts in the default registry (each
service's `metrics.py`). The deployment-wide view (read model, JetStream) is the gateway's
/metrics. A port that cannot be had is a warning, never a service that will not start."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from prometheus_client import Gauge, start_http_server

from tgdl.runtime.jsonlog import service_name

log = logging.getLogger("tgdl.runtime")

_INFO = Gauge("tgdl_service_info", "One per tgdl service process", ["service", "replica"])


def start_metrics_server(service: str | None = None,
                         env: Mapping[str, str] | None = None) -> int | None:
    """Serve /metrics when TGDL_METRICS_PORT is set; returns the port, or None."""
    env = os.environ if env is None else env
    raw = env.get("TGDL_METRICS_PORT", "").strip()
    if not raw:
        return None
    service = service or service_name()
    _INFO.labels(service, env.get("TGDL_REPLICA", "")).set(1)
    host = env.get("TGDL_METRICS_HOST", "127.0.0.1")
    try:
        port = int(raw)
        if not 1 <= port <= 65535:
            raise ValueError(raw)
        start_http_server(port, addr=host)
    except ValueError:
        log.warning("TGDL_METRICS_PORT=%r is not a port (1-65535): no metrics served", raw)
        return None
    except OSError as exc:  # e.g. several replicas on one machine given the same port
        log.warning("metrics not served on %s:%s: %s", host, raw, exc)
        return None
    log.info("%s metrics on http://%s:%d/metrics", service, host, port)
    return port
