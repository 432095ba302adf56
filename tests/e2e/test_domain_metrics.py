"""Every service counts what it does on its own /metrics: a batch run through the whole
stack shows up in the downloaders', the orchestrator's and the projector's numbers, and a
flood wait, a failure and a cancel each where they happened."""

from __future__ import annotations

import pytest
from e2e_stack import Stack
from waiting import until

from tgdl.simtelegram import client as sim_client

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024
FLOOD_SECONDS = 3  # long enough to be seen waiting on a loaded machine


async def test_each_service_counts_the_batch_where_it_happens(stack: Stack):
    big = stack.media_ids(1, min_size=2_000_000)[0]  # for the cancel at the end
    sizes = {m.message_id: m.size for m in stack.sim_messages()}
    healthy = [m for m in stack.media_ids(20) if m != big]
    # files of one request and files of several parts: both ways of storing are counted
    ids = ([m for m in healthy if sizes[m] <= MiB][:2]
           + [m for m in healthy if sizes[m] > MiB][:2])
    assert len(ids) == 4
    [deleted] = [m.message_id for m in stack.sim_messages() if m.deleted and m.media_kind][:1]
    await sim_client.set_faults(stack.sim_url, flood_wait={
        "message_id": ids[0], "seconds": FLOOD_SECONDS, "times": 1})
    started = await stack.start_batch([*ids, deleted], max_concurrent=2)
    batch = started["batch_id"]

    # While it runs: the orchestrator holds the batch's two permits, and the account's
    # flood wait holds a download up.
    async def permits_in_use():
        m = await stack.metrics("orchestrator")
        return m.value("tgdl_orchestrator_batch_permits_in_use", batch_id=batch) == 2 and m
    m = await until(permits_in_use, 15, every=0.05, what="the batch's 2 permits in use")
    assert m.value("tgdl_orchestrator_permits_in_use") == 2
    assert m.value("tgdl_orchestrator_global_cap") == 8
    assert m.value("tgdl_orchestrator_batch_max_concurrent", batch_id=batch) == 2

    async def waiting_on_flood():
        return await stack.summed("downloader", "tgdl_downloader_files_waiting_on_flood") >= 1
    await until(waiting_on_flood, 15, every=0.05, what="a download waiting on the flood wait")

    final = await stack.until_finished(batch, within=60)
    assert (final["completed"], final["failed"]) == (4, 1)

    async def downloaders_counted():
        return await stack.summed("downloader", "tgdl_downloader_downloads_completed_total") == 4
    await until(downloaders_counted, 10, what="the downloaders' completed count")
    d = {name: await stack.summed("downloader", name) for name in (
        "tgdl_downloader_downloads_started_total", "tgdl_downloader_bytes_total",
        "tgdl_downloader_hash_verified_total", "tgdl_downloader_flood_waits_total",
        "tgdl_downloader_flood_wait_seconds_total", "tgdl_downloader_downloads_in_flight",
        "tgdl_downloader_files_waiting_on_flood")}
    assert d["tgdl_downloader_bytes_total"] == sum(sizes[m] for m in ids)
    assert d["tgdl_downloader_hash_verified_total"] == 4  # the simulator publishes hashes
    assert d["tgdl_downloader_downloads_started_total"] >= 5
    assert d["tgdl_downloader_flood_waits_total"] == 1
    assert d["tgdl_downloader_flood_wait_seconds_total"] == FLOOD_SECONDS
    assert d["tgdl_downloader_downloads_in_flight"] == 0
    assert d["tgdl_downloader_files_waiting_on_flood"] == 0
    assert await stack.summed("downloader", "tgdl_downloader_downloads_failed_total",
                              reason="message_deleted") == 1

    o = await stack.metrics("orchestrator")
    assert o.value("tgdl_orchestrator_batches_started_total", kind="batch") == 1
    assert o.value("tgdl_orchestrator_permits_granted_total") == 5
    assert o.value("tgdl_orchestrator_jobs_published_total") == 5
    assert o.value("tgdl_orchestrator_outcomes_handled_total", status="completed") == 4
    assert o.value("tgdl_orchestrator_outcomes_handled_total", status="failed") == 1
    assert o.value("tgdl_orchestrator_batches_finished_total", status="failed") == 1
    assert o.value("tgdl_orchestrator_events_appended_total", type="FileCompleted") == 4
    assert o.value("tgdl_orchestrator_permits_in_use") == 0
    assert o.value("tgdl_orchestrator_batch_permits_in_use", batch_id=batch) == 0  # gone

    events = stack.names.events_stream

    async def projector_caught_up():
        p = await stack.metrics("projector")
        lag = p.value("tgdl_projector_lag_messages") + p.value("tgdl_projector_lag_seconds")
        return p if lag == 0 and p.value("tgdl_projector_messages_applied_total",
                                         stream=events) else None
    p = await until(projector_caught_up, 15, what="the projector caught up")
    appended = o.value("tgdl_orchestrator_appends_total")  # messages, a decision each
    assert appended < o.value("tgdl_orchestrator_events_appended_total")
    assert p.value("tgdl_projector_messages_applied_total", stream=events) == appended
    assert p.value("tgdl_projector_transactions_total", kind="events") >= 1
    assert p.value("tgdl_projector_apply_delay_seconds_count", stream=events) == appended

    g = await stack.metrics("gateway")
    assert g.value("tgdl_http_request_duration_seconds_count",
                   route="/api/media/batch-status/{batch_id}") >= 1

    # A cancel: counted by the orchestrator, and by the downloader that stops the file.
    other = (await stack.start_batch([big], max_concurrent=1))["batch_id"]
    await stack.until_serving(1)
    await stack.cancel(other)

    async def cancel_counted():
        return (await stack.summed("downloader", "tgdl_downloader_downloads_cancelled_total")
                == 1)
    await until(cancel_counted, 10, what="the downloader's cancelled count")
    o = await stack.metrics("orchestrator")
    assert o.value("tgdl_orchestrator_batches_cancelled_total") == 1
    assert o.value("tgdl_orchestrator_open_batches") == 0
