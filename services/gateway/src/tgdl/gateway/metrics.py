"""Prometheus metrics at GET /metrics: HTTP latency by route, measured here, and the state
of the downloads, read at scrape time from the read model and JetStream (so the numbers
are the whole deployment's, whichever gateway replica is scraped)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tgdl.contracts.status import JobState
from tgdl.db.readmodel import operational_counts
from tgdl.gateway.services import Services

log = logging.getLogger("tgdl.gateway")

SOURCE_TIMEOUT = 3.0  # seconds a scrape waits for PostgreSQL or NATS before saying "down"
IN_FLIGHT = (JobState.starting, JobState.downloading, JobState.retrying, JobState.waiting)

router = APIRouter(tags=["operations"])


def http_histogram(registry: CollectorRegistry) -> Histogram:
    return Histogram(
        "tgdl_http_request_duration_seconds",
        "Time to the response's first byte, by method, route template and status",
        ["method", "route", "status"], registry=registry,
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))


class LatencyMiddleware:
    """Observes every HTTP request on its route's template (`/api/media/batch-status/
    {batch_id}`, never the id itself), up to the start of the response: an event stream's
    latency is how soon it answers, not how long it stays open."""

    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        observed = False

        def observe(status: int) -> None:
            nonlocal observed
            if not observed:
                observed = True
                route = getattr(scope.get("route"), "path", None)
                if route is None:
                    route = "/media" if scope["path"].startswith("/media/") else "unmatched"
                self.histogram.labels(scope["method"], route, str(status)).observe(
                    time.perf_counter() - started)

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                observe(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        except Exception:
            observe(500)
            raise


def families(counts: dict[str, Any] | None, js: dict[str, Any] | None,
             global_cap: int) -> Iterable[Metric]:
    """Metric families from what the read model (`counts`) and JetStream (`js`) said;
    None for a source that did not answer (its metrics are left out, `tgdl_source_up` 0)."""
    up = GaugeMetricFamily("tgdl_source_up", "Whether the scrape could read this source",
                           labels=["source"])
    up.add_metric(["postgresql"], 1 if counts is not None else 0)
    up.add_metric(["nats"], 1 if js is not None else 0)
    yield up
    cap = GaugeMetricFamily("tgdl_global_cap",
                            "Downloads allowed in flight across all batches (TGDL_GLOBAL_CAP)")
    cap.add_metric([], global_cap)
    yield cap

    if counts is not None:
        yield from _read_model_families(counts)
    if js is not None:
        queue = GaugeMetricFamily("tgdl_jobs_queue_depth",
                                  "Download jobs waiting for a downloader (in the queue "
                                  "or for room under the global cap)")
        queue.add_metric([], js["pending"])
        yield queue
        unacked = GaugeMetricFamily("tgdl_jobs_unacknowledged",
                                    "Download jobs handed to downloaders and not finished")
        unacked.add_metric([], js["ack_pending"])
        yield unacked
        pullers = GaugeMetricFamily("tgdl_jobs_pulls_waiting",
                                    "Pull requests of idle downloader slots")
        pullers.add_metric([], js["waiting"])
        yield pullers
        if counts is not None:
            lag = GaugeMetricFamily("tgdl_read_model_lag_messages",
                                    "Stream messages the projector has not applied yet",
                                    labels=["stream"])
            for stream, last in js["streams"].items():
                lag.add_metric([stream], max(0, last - counts["positions"].get(stream, 0)))
            yield lag


def _read_model_families(counts: dict[str, Any]) -> Iterable[Metric]:
    jobs = counts["jobs"]
    started = CounterMetricFamily("tgdl_downloads_started",
                                  "Download jobs a downloader has reported on")
    started.add_metric([], sum(j["n"] for j in jobs))
    completed = CounterMetricFamily("tgdl_downloads_completed", "Downloads that completed")
    completed.add_metric([], sum(j["n"] for j in jobs if j["state"] == JobState.completed))
    failed = CounterMetricFamily("tgdl_downloads_failed", "Downloads that failed, by reason",
                                 labels=["reason"])
    by_reason: Counter[str] = Counter()
    for j in jobs:
        if j["state"] == JobState.failed:
            by_reason[j["reason"] or "unknown"] += j["n"]
    for reason, n in sorted(by_reason.items()):
        failed.add_metric([reason], n)
    cancelled = CounterMetricFamily("tgdl_downloads_cancelled", "Downloads that were stopped")
    cancelled.add_metric([], sum(j["n"] for j in jobs if j["state"] == JobState.cancelled))
    done_bytes = CounterMetricFamily("tgdl_downloaded_bytes",
                                     "Bytes of the downloads that completed")
    done_bytes.add_metric([], sum(j["bytes"] for j in jobs if j["state"] == JobState.completed))
    yield from (started, completed, failed, cancelled, done_bytes)

    in_flight = GaugeMetricFamily("tgdl_downloads_in_flight", "Downloads under way, by state",
                                  labels=["state"])
    for state in IN_FLIGHT:
        in_flight.add_metric([state.value], sum(j["n"] for j in jobs if j["state"] == state))
    yield in_flight
    running_bytes = GaugeMetricFamily("tgdl_in_flight_bytes",
                                      "Bytes the downloads under way have so far")
    running_bytes.add_metric([], sum(j["bytes"] for j in jobs if j["state"] in IN_FLIGHT))
    yield running_bytes
    flood = GaugeMetricFamily("tgdl_flood_wait_seconds",
                              "The longest Telegram flood wait a download is sitting out now")
    flood.add_metric([], max((j["longest_wait"] for j in jobs
                              if j["state"] == JobState.waiting), default=0))
    yield flood

    permits = GaugeMetricFamily("tgdl_batch_permits_in_use",
                                "Permits an open batch has granted (files it has in flight)",
                                labels=["batch_id"])
    limits = GaugeMetricFamily("tgdl_batch_max_concurrent", "An open batch's max_concurrent",
                               labels=["batch_id"])
    for p in counts["permits"]:
        permits.add_metric([p["batch_id"]], p["in_use"])
        limits.add_metric([p["batch_id"]], p["max_concurrent"])
    total = GaugeMetricFamily("tgdl_permits_in_use",
                              "Permits in use across all batches (compare tgdl_global_cap)")
    total.add_metric([], sum(p["in_use"] for p in counts["permits"]))
    yield from (permits, limits, total)
    batches = GaugeMetricFamily("tgdl_batches", "Batches by status", labels=["status"])
    for status, n in sorted(counts["batches"].items()):
        batches.add_metric([status], n)
    yield batches


class _Fixed(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self.metrics


async def _within(what: str, read: Callable[[], Awaitable[Any]]) -> Any:
    try:
        async with asyncio.timeout(SOURCE_TIMEOUT):
            return await read()
    except Exception as exc:  # a source that is down is reported, not a failed scrape
        log.debug("metrics: %s unreadable: %s", what, exc)
        return None


async def _jetstream(svc: Services) -> dict[str, Any]:
    js = svc.nc.jetstream()
    names = svc.settings.names
    consumer = await js.consumer_info(names.jobs_stream, names.downloader_consumer)
    streams = {}
    for stream in (names.events_stream, names.outcomes_stream, names.progress_stream):
        streams[stream] = (await js.stream_info(stream)).state.last_seq
    # jobs waiting for room under the global cap (tgdl.bus.admission) wait for a downloader too
    waiting_room = (await js.stream_info(names.waiting_stream)).state.messages or 0
    return {"pending": (consumer.num_pending or 0) + waiting_room,
            "ack_pending": consumer.num_ack_pending or 0,
            "waiting": consumer.num_waiting or 0, "streams": streams}


async def _read_model(svc: Services) -> dict[str, Any]:
    async with svc.pool.acquire() as conn:
        return await operational_counts(conn)


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    svc: Services = request.app.state.services
    counts, js = await asyncio.gather(_within("PostgreSQL", lambda: _read_model(svc)),
                                      _within("NATS", lambda: _jetstream(svc)))
    scraped = CollectorRegistry(auto_describe=False)
    scraped.register(_Fixed(list(families(counts, js, svc.settings.global_cap))))
    body = generate_latest(request.app.state.metrics_registry) + generate_latest(scraped)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def install(app: FastAPI) -> None:
    """GET /metrics and the latency of every request."""
    registry = CollectorRegistry(auto_describe=True)  # one per app: tests build many apps
    ProcessCollector(registry=registry)  # CPU and memory, as the other services' ports
    app.state.metrics_registry = registry
    app.add_middleware(LatencyMiddleware, histogram=http_histogram(registry))
    app.include_router(router)
