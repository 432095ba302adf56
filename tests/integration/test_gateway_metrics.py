"""GET /metrics on the gateway, against real PostgreSQL and NATS: the downloads' state as
the read model and JetStream hold it, and HTTP latency by route template."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tgdl.contracts.catalog import CatalogEntry, MediaKind
from tgdl.contracts.errors import ErrorCode, Failure
from tgdl.contracts.events import BatchStarted, JobDispatched, PermitGranted
from tgdl.contracts.jobs import DownloadOutcome, DownloadProgress
from tgdl.db.positions import save_positions
from tgdl.gateway.settings import GatewaySettings
from tgdl.projector.fold import fold_event, fold_outcome, fold_progress
from tgdl.projector.sql import apply_changes

AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def settings(servers, isolation) -> GatewaySettings:
    return GatewaySettings(
        nats_url=servers.nats_url, database_url=servers.database_url,
        namespace=isolation.namespace, db_schema=isolation.schema,
        media_root=isolation.media_root, command_timeout=2.0, projection_wait=0.3,
        global_cap=6,
    )


def entry(m: int) -> CatalogEntry:
    return CatalogEntry(message_id=m, chat="chan", telegram_message_id=900 + m,
                        media_kind=MediaKind.video, file_name=f"v{m}.mp4", size=1_000_000)


def outcome(m: int, status: str, failure: Failure | None = None) -> DownloadOutcome:
    return DownloadOutcome(job_id=f"b:{m}", message_id=m, status=status, at=AT,
                           size=1_000_000 if status == "completed" else None,
                           failure=failure)


async def a_busy_batch(db) -> None:
    """Batch b (max_concurrent 3 of 6 files): 1 completed, 2 failed (deleted, flood wait
    too long), 1 downloading at 40 %, 1 in a 42 s flood wait, 1 pending."""
    events = [BatchStarted(batch_id="b", at=AT, kind="batch", max_concurrent=3, force=False,
                           requested_ids=list(range(1, 7)),
                           to_download=[entry(m) for m in range(1, 7)],
                           already_downloaded=[], failed_to_start=[])]
    for m in range(1, 6):
        events += [PermitGranted(batch_id="b", at=AT, message_id=m, job_id=f"b:{m}"),
                   JobDispatched(batch_id="b", at=AT, message_id=m, job_id=f"b:{m}",
                                 attached=False)]
    for e in events:
        await apply_changes(db, fold_event(e))
    gone = Failure.of(ErrorCode.message_deleted, "deleted")
    slow = Failure.of(ErrorCode.flood_wait_too_long, "wait too long")
    changes = [*fold_outcome(outcome(1, "completed")), *fold_outcome(outcome(2, "failed", gone)),
               *fold_outcome(outcome(3, "failed", slow)),
               *fold_progress(DownloadProgress(job_id="b:4", message_id=4, state="downloading",
                                               downloaded_size=400_000, total_size=1_000_000,
                                               download_speed=90_000, at=AT)),
               *fold_progress(DownloadProgress(job_id="b:5", message_id=5, state="waiting",
                                               downloaded_size=0, total_size=1_000_000,
                                               wait_seconds=42, at=AT))]
    await apply_changes(db, changes)
    # The orchestrator's verdicts on the failed files: their permits are given back.
    await db.execute("UPDATE batch_files SET status = 'failed' WHERE message_id IN (2, 3)")
    await db.execute("UPDATE batch_files SET status = 'completed' WHERE message_id = 1")


def scrape(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_metrics_tell_the_state_of_the_downloads(client, db, nc, settings):
    await a_busy_batch(db)
    js = nc.jetstream()
    names = settings.names
    for _ in range(3):  # three events the projector has not applied, one it has
        await js.publish(names.batch_events("other"), b"{}")
    await save_positions(db, {names.events_stream: 1}, {})
    await js.publish(names.download_jobs, b"{}")  # a job no downloader has pulled

    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    m = scrape(response.text)
    assert m[("tgdl_source_up", (("source", "postgresql"),))] == 1
    assert m[("tgdl_source_up", (("source", "nats"),))] == 1
    assert m[("tgdl_downloads_started_total", ())] == 5
    assert m[("tgdl_downloads_completed_total", ())] == 1
    assert m[("tgdl_downloads_failed_total", (("reason", "message_deleted"),))] == 1
    assert m[("tgdl_downloads_failed_total", (("reason", "flood_wait_too_long"),))] == 1
    assert m[("tgdl_downloaded_bytes_total", ())] == 1_000_000
    assert m[("tgdl_downloads_in_flight", (("state", "downloading"),))] == 1
    assert m[("tgdl_downloads_in_flight", (("state", "waiting"),))] == 1
    assert m[("tgdl_in_flight_bytes", ())] == 400_000
    assert m[("tgdl_flood_wait_seconds", ())] == 42
    assert m[("tgdl_batch_permits_in_use", (("batch_id", "b"),))] == 2
    assert m[("tgdl_batch_max_concurrent", (("batch_id", "b"),))] == 3
    assert m[("tgdl_permits_in_use", ())] == 2 and m[("tgdl_global_cap", ())] == 6
    assert m[("tgdl_batches", (("status", "in_progress"),))] == 1
    assert m[("tgdl_jobs_queue_depth", ())] == 1
    assert m[("tgdl_read_model_lag_messages", (("stream", names.events_stream),))] == 2
    assert m[("tgdl_read_model_lag_messages", (("stream", names.outcomes_stream),))] == 0


async def test_http_latency_is_by_route_template_and_status(client):
    for batch_id in ("one", "two"):
        assert (await client.get(f"/api/media/batch-status/{batch_id}")).status_code == 404
    assert (await client.get("/api/messages?limit=0")).status_code == 422
    assert (await client.get("/nowhere")).status_code == 404
    m = scrape((await client.get("/metrics")).text)
    count = "tgdl_http_request_duration_seconds_count"
    status = (("method", "GET"), ("route", "/api/media/batch-status/{batch_id}"),
              ("status", "404"))
    assert m[(count, status)] == 2
    assert m[(count, (("method", "GET"), ("route", "/api/messages"), ("status", "422")))] == 1
    assert m[(count, (("method", "GET"), ("route", "unmatched"), ("status", "404")))] == 1
    assert not any("one" in str(labels) for _, labels in m)  # ids never become labels


async def test_a_source_that_is_down_is_reported_not_a_failed_scrape(client, nc, settings):
    await nc.jetstream().delete_stream(settings.names.jobs_stream)
    response = await client.get("/metrics")
    assert response.status_code == 200
    m = scrape(response.text)
    assert m[("tgdl_source_up", (("source", "nats"),))] == 0
    assert m[("tgdl_source_up", (("source", "postgresql"),))] == 1
    assert ("tgdl_jobs_queue_depth", ()) not in m
