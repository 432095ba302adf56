"""Steering a batch under way through HTTP, every service a process: pause, resume, a new
max_concurrent, and a pause that outlives an orchestrator restart."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from e2e_stack import Stack
from waiting import until

from tgdl.contracts.paths import PARTS_SUFFIX
from tgdl.downloader.telegram.port import PART_SIZE
from tgdl.simtelegram import client as sim_client
from tgdl.simtelegram.content import expected_sha256

pytestmark = pytest.mark.e2e

# A pause stops running files within about a second; a test allows a loaded machine more.
STOPS_WITHIN = 4.0


async def hold_second_parts(stack: Stack, ids: list[int]) -> None:
    """The first answer for each file's second part trickles (minutes for 1 MiB): its
    first part lands and the file is still downloading when the test steers it, however
    loaded the machine; the resumed download asks again and gets it at full speed."""
    await sim_client.set_faults(stack.sim_url, slow=[
        {"message_id": m, "offset": PART_SIZE, "bandwidth": 5_000} for m in ids])


def some_parts_on_disk(stack: Stack, files: int):
    """A condition: `files` downloads each have a finished part recorded in their sidecar."""
    async def check():
        sidecars = list(stack.media_root.rglob(f"*{PARTS_SUFFIX}"))
        return len(sidecars) == files and all(
            len(p.read_text().splitlines()) > 1 for p in sidecars)
    return check


async def post(stack: Stack, path: str, expect: int = 200, **kw) -> dict:
    r = await stack.http.request(kw.pop("method", "POST"), path, **kw)
    assert r.status_code == expect, r.text
    return r.json()


@pytest.mark.stack(sim_bandwidth=400_000, parts_per_file=1)  # seconds per file
async def test_pause_keeps_parts_through_a_restart_and_resume_completes_exact_files(
        stack: Stack):
    ids = stack.media_ids(4, min_size=1_500_000)
    await hold_second_parts(stack, ids[:2])  # the two files the pause stops
    started = await stack.start_batch(ids, max_concurrent=2)
    b = started["batch_id"]
    await stack.until_serving(2)
    await until(some_parts_on_disk(stack, 2), 20, what="a part of each file on disk")

    paused = await post(stack, f"/api/media/batch-pause/{b}")
    assert (paused["status"], paused["paused_downloads"], paused["total_files"]) == (
        "paused", 2, 4)
    # the second parts are held: without the pause they would be served forever
    await stack.until_serving(0, within=STOPS_WITHIN)

    async def shown_paused():
        body = await stack.status(b)
        return body if body.get("overall_status") == "paused" else None
    body = await until(shown_paused, 10, what="status paused")
    assert [f["status"] for f in body["files"]] == ["paused", "paused", "pending", "pending"]

    async def kept_bytes_shown():  # once the stopped jobs report what their .part kept
        body = await stack.status(b)
        return body if all(f.get("downloaded_size") for f in body["files"][:2]) else None
    body = await until(kept_bytes_shown, 10, what="paused files showing their bytes")
    for f in body["files"][:2]:
        assert 0 < f["downloaded_size"] <= f["total_size"] and f["progress"] > 0
    assert (body["paused"], body["pending"], body["finished"]) == (2, 2, False)
    assert body["summary"].startswith("Paused: ")
    kept = [p for p in stack.media_root.rglob("*.part") if not p.name.endswith(PARTS_SUFFIX)]
    assert len(kept) == 2  # the bytes wait on disk (each with its parts sidecar)

    again = await post(stack, f"/api/media/batch-pause/{b}")
    assert again["status"] == "already_paused"
    # a new limit while paused takes effect at the resume
    changed = await post(stack, f"/api/media/batch/{b}", method="PATCH",
                         json={"max_concurrent": 3})
    assert (changed["status"], changed["previous_max_concurrent"],
            changed["started_downloads"]) == ("changed", 2, [])

    # the orchestrator dies and comes back: the batch stays paused, nothing starts
    stack.kill("orchestrator")
    stack.spawn("orchestrator", "tgdl.orchestrator")

    async def orchestrator_up():
        r = await stack.http.post("/api/media/batch-cancel/probe_ready")
        return r.status_code == 404
    await until(orchestrator_up, 40, what="orchestrator answering again")
    assert (await stack.sim_stats())["serving"] == 0
    assert (await stack.status(b))["overall_status"] == "paused"

    resumed = await post(stack, f"/api/media/batch-resume/{b}")
    assert (resumed["status"], resumed["resumed_downloads"]) == ("resumed", 3)
    final = await stack.until_finished(b, within=90)
    assert final["overall_status"] == "completed" and final["completed"] == 4
    assert final["max_concurrent"] == 3
    sizes = {m.message_id: m.size for m in stack.sim_messages()}
    for f in final["files"]:
        digest = hashlib.sha256(Path(f["file_path"]).read_bytes()).hexdigest()
        assert digest == expected_sha256(f["message_id"], sizes[f["message_id"]])
    assert not list(stack.media_root.rglob("*.part"))
    assert (await stack.sim_stats())["max_serving"] <= 3

    late = await post(stack, f"/api/media/batch-pause/{b}")
    assert late["status"] == "already_finished"  # a clear answer, not an error


async def test_steering_answers_unknown_batches_and_bad_limits_clearly(stack: Stack):
    for method, path, body in (("POST", "/api/media/batch-pause/batch_nothere", None),
                               ("POST", "/api/media/batch-resume/batch_nothere", None),
                               ("PATCH", "/api/media/batch/batch_nothere",
                                {"max_concurrent": 2})):
        answer = await post(stack, path, 404, method=method, json=body)
        assert answer["error"] == "batch_not_found"
    for bad in ({"max_concurrent": 0}, {"max_concurrent": 6}, {"max_concurrent": "three"},
                {"max_concurrent": "3"}, {"max_concurrent": True},
                {"priority": "urgent"}, {}):
        await post(stack, "/api/media/batch/batch_nothere", 422, method="PATCH", json=bad)
    ids = stack.media_ids(3)
    b = (await stack.start_batch(ids, max_concurrent=1))["batch_id"]
    raised = await post(stack, f"/api/media/batch/{b}", method="PATCH",
                        json={"max_concurrent": 3})
    assert raised["status"] == "changed" and len(raised["started_downloads"]) == 2
    assert (await post(stack, f"/api/media/batch-resume/{b}"))["status"] == "not_paused"
    assert (await stack.until_finished(b))["overall_status"] == "completed"


@pytest.mark.stack(sim_bandwidth=400_000, parts_per_file=1)
async def test_priority_at_start_changed_later_and_shown_in_status_and_list(stack: Stack):
    ids = stack.media_ids(3, min_size=1_500_000)
    b = (await stack.start_batch(ids, max_concurrent=1, priority="low"))["batch_id"]
    assert (await stack.status(b))["priority"] == "low"
    changed = await post(stack, f"/api/media/batch/{b}", method="PATCH",
                         json={"priority": "high"})
    assert (changed["status"], changed["priority"], changed["previous_priority"],
            changed["max_concurrent"]) == ("changed", "high", "low", 1)
    same = await post(stack, f"/api/media/batch/{b}", method="PATCH", json={"priority": "high"})
    assert same["status"] == "unchanged"

    async def projected():
        return (await stack.status(b)).get("priority") == "high"
    await until(projected, 10, what="the new priority in the status")
    listed = (await stack.http.get("/api/media/batches")).json()["items"]
    assert next(i for i in listed if i["batch_id"] == b)["priority"] == "high"
    final = await stack.until_finished(b, within=90)
    assert final["overall_status"] == "completed"
    late = await post(stack, f"/api/media/batch/{b}", method="PATCH", json={"priority": "low"})
    assert late["status"] == "already_finished"


@pytest.mark.stack(sim_bandwidth=400_000, parts_per_file=1)
async def test_a_single_download_pauses_and_resumes_by_message_id(stack: Stack):
    (m,) = stack.media_ids(1, min_size=1_500_000)
    assert (await post(stack, f"/api/media/pause/{m}"))["status"] == "not_downloading"
    await hold_second_parts(stack, [m])
    started = await post(stack, f"/api/media/download/{m}", json={"priority": "high"})
    d = started["download_id"]
    assert (await stack.status(d))["priority"] == "high"
    await until(some_parts_on_disk(stack, 1), 20, what="a part on disk")
    paused = await post(stack, f"/api/media/pause/{m}")
    assert (paused["status"], paused["download_id"]) == ("paused", d)
    assert paused["message"] == f"Download of message {m} paused; its partial file is kept"
    await stack.until_serving(0, within=STOPS_WITHIN)

    async def shown_paused():
        body = (await stack.http.get(f"/api/media/status/{m}")).json()
        return body if body["status"] == "paused" and body.get("downloaded_size") else None
    body = await until(shown_paused, 10, what="the single download paused with its bytes")
    assert body["download_id"] == d and body["progress"] > 0
    kept = [p for p in stack.media_root.rglob("*.part") if not p.name.endswith(PARTS_SUFFIX)]
    assert len(kept) == 1  # its bytes wait on disk for the resume
    again = await post(stack, f"/api/media/pause/{m}")
    assert (again["status"], again["message"]) == (
        "already_paused", f"Download of message {m} was already paused")

    resumed = await post(stack, f"/api/media/resume/{m}")
    assert (resumed["status"], resumed["download_id"], resumed["message"]) == (
        "resumed", d, f"Download of message {m} resumed")
    again = await post(stack, f"/api/media/resume/{m}")
    assert (again["status"], again["message"]) == (
        "not_paused", f"Download of message {m} was not paused")
    final = await stack.until_finished(d, within=60)
    assert final["overall_status"] == "completed"
    f = final["files"][0]
    size = next(x.size for x in stack.sim_messages() if x.message_id == m)
    assert hashlib.sha256(Path(f["file_path"]).read_bytes()).hexdigest() == \
        expected_sha256(m, size)
    assert (await post(stack, f"/api/media/resume/{m}"))["status"] == "not_downloading"


@pytest.mark.stack(sim_bandwidth=400_000, parts_per_file=1)
async def test_a_status_read_right_after_a_change_shows_the_change(stack: Stack):
    """Each answer comes once the read model shows the change it reports: a client that
    reads the status at once sees what it was just told, never the state before."""
    ids = stack.media_ids(4, min_size=1_500_000)
    batch, single = ids[:3], ids[3]
    await hold_second_parts(stack, ids)  # nothing finishes while the test steers it
    b = (await stack.start_batch(batch, max_concurrent=1))["batch_id"]
    await stack.until_serving(1)

    assert (await post(stack, f"/api/media/batch-pause/{b}"))["status"] == "paused"
    assert (await stack.status(b))["overall_status"] == "paused"
    assert (await post(stack, f"/api/media/batch-resume/{b}"))["status"] == "resumed"
    assert (await stack.status(b))["overall_status"] != "paused"
    changed = await post(stack, f"/api/media/batch/{b}", method="PATCH",
                         json={"max_concurrent": 2, "priority": "high"})
    assert changed["status"] == "changed"
    body = await stack.status(b)
    assert (body["max_concurrent"], body["priority"]) == (2, "high")
    assert (await post(stack, f"/api/media/batch-cancel/{b}"))["status"] == "cancelled"
    assert (await stack.status(b))["overall_status"] == "cancelled"

    assert (await post(stack, f"/api/media/download/{single}", json={}))["status"] == "started"
    assert (await post(stack, f"/api/media/pause/{single}"))["status"] == "paused"
    assert (await stack.http.get(f"/api/media/status/{single}")).json()["status"] == "paused"
    assert (await post(stack, f"/api/media/cancel/{single}"))["status"] == "cancelled"
    assert (await stack.http.get(f"/api/media/status/{single}")).json()["status"] == "cancelled"
