"""The product as a user sees it: every service a separate process, real servers."""

from __future__ import annotations

import asyncio
import hashlib
import signal
from pathlib import Path

import pytest
from e2e_stack import Stack
from waiting import until

from tgdl.downloader.telegram.port import PART_SIZE
from tgdl.simtelegram import client as sim_client
from tgdl.simtelegram.content import expected_sha256

pytestmark = pytest.mark.e2e


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


class Watcher:
    """Samples the simulated Telegram and the batch status while a test runs."""

    def __init__(self, stack: Stack, batch_ids: list[str]) -> None:
        self.stack = stack
        self.batch_ids = batch_ids
        self.max_serving = 0
        self.seen: dict[tuple[str, int], list[str]] = {}
        self.snapshots: list[dict] = []
        self._task: asyncio.Task | None = None

    async def _sample(self) -> None:
        stats = await self.stack.sim_stats()
        self.max_serving = max(self.max_serving, stats["serving"], stats["max_serving"])
        for batch_id in self.batch_ids:
            body = await self.stack.status(batch_id)
            if body:
                self.snapshots.append(body)
                for f in body["files"]:
                    history = self.seen.setdefault((batch_id, f["message_id"]), [])
                    if not history or history[-1] != f["status"]:
                        history.append(f["status"])

    async def _run(self) -> None:
        while True:
            await self._sample()
            await asyncio.sleep(0.1)

    async def __aenter__(self) -> Watcher:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        # one look after the end: the last periodic one may predate the last change
        await self._sample()


ORDER = ["pending", "queued", "downloading", "completed"]


# One part at a time, files of two parts or more, and progress flushed to the read model
# five times a second: a downloader reports after each 1 MiB part, so live speed and time
# left reach the read model before such a file ends, on any machine.
@pytest.mark.stack(parts_per_file=1, progress_flush_interval=0.2)
async def test_batch_of_20_completes_within_its_permits_with_exact_bytes(stack: Stack):
    ids = stack.media_ids(20)
    started = await stack.start_batch(ids, max_concurrent=3)
    assert started["status"] == "started" and started["total_files"] == 20
    assert sorted(started["started_downloads"]) == sorted(ids)
    assert started["batch_id"].startswith("batch_")
    async with Watcher(stack, [started["batch_id"]]) as watch:
        final = await stack.until_finished(started["batch_id"], within=90)

    assert watch.max_serving <= 3, "the simulated Telegram served more than max_concurrent"
    assert watch.max_serving >= 2, "the batch never downloaded in parallel"
    assert (await stack.sim_stats())["max_serving"] <= 3
    assert final["overall_status"] == "completed" and final["completed"] == 20
    assert (final["failed"], final["pending"], final["downloading"]) == (0, 0, 0)

    by_id = {m.message_id: m for m in stack.sim_messages()}
    for f in final["files"]:
        assert f["status"] == "completed" and f["progress"] == 100
        assert f["hash_verified"] is True  # every part matched the served range hashes
        path = Path(f["file_path"])
        assert path.is_relative_to(stack.media_root)
        assert sha256(path) == expected_sha256(f["message_id"], by_id[f["message_id"]].size)
        assert f["download_url"] == "/media/" + path.relative_to(stack.media_root).as_posix()
    assert not list(stack.media_root.rglob("*.part"))

    # Every file moved forward only: pending -> (queued) -> downloading -> completed.
    for history in watch.seen.values():
        positions = [ORDER.index(s) for s in history]
        assert positions == sorted(positions), history
        assert history[-1] == "completed"
    assert any("downloading" in h for h in watch.seen.values())
    # The numbers shown while downloading are sane.
    live = [f for s in watch.snapshots for f in s["files"] if f["status"] == "downloading"]
    assert live, "no file was ever seen downloading"
    for f in live:
        assert 0 <= f["downloaded_size"] <= f["total_size"]
        assert 0 <= f["progress"] <= 100
        assert f["download_speed"] >= 0
        assert f["estimated_time_remaining"] is None or f["estimated_time_remaining"] >= 0
    assert any(f["download_speed"] > 0 and f["estimated_time_remaining"] is not None
               for f in live), sorted({(f["message_id"], f["downloaded_size"],
                                        f["download_speed"]) for f in live})
    for s in watch.snapshots:
        assert s["completed"] + s["downloading"] + s["failed"] + s["pending"] + s[
            "cancelled"] == 20
        assert s["downloading"] <= 3

    # Finished files are served by the gateway.
    one = final["files"][0]
    served = await stack.http.get(one["download_url"])
    assert served.status_code == 200
    assert hashlib.sha256(served.content).hexdigest() == sha256(Path(one["file_path"]))


async def test_overlapping_batches_download_nothing_twice(stack: Stack):
    ids = stack.media_ids(9, min_size=1_500_000)
    first = await stack.start_batch(ids[:6], max_concurrent=3)
    await stack.until_serving(3)  # the first batch is downloading ids[0..2]
    second = await stack.start_batch(ids[:3] + ids[6:], max_concurrent=3)
    # what the first batch is downloading right now is shared, not started again
    assert second["already_downloading"], second
    results = [await stack.until_finished(b["batch_id"]) for b in (first, second)]
    assert all(r["overall_status"] == "completed" for r in results)
    stats = await stack.sim_stats()
    sizes = {m.message_id: m.size for m in stack.sim_messages()}
    for m in ids:
        assert stats["bytes_sent_by_id"].get(m) == sizes[m], f"message {m} sent twice"
    # A third batch of finished files downloads nothing at all.
    third = await stack.start_batch(ids[:4])
    assert sorted(third["already_downloaded"]) == sorted(ids[:4])
    assert third["started_downloads"] == []
    assert (await stack.until_finished(third["batch_id"]))["overall_status"] == "completed"
    # force downloads a finished file again, replacing it only once complete
    forced = await stack.start_batch(ids[:1], force=True)
    assert forced["started_downloads"] == ids[:1] and forced["already_downloaded"] == []
    assert (await stack.until_finished(forced["batch_id"]))["overall_status"] == "completed"
    assert (await stack.sim_stats())["bytes_sent_by_id"][ids[0]] == 2 * sizes[ids[0]]


async def test_cancel_stops_running_downloads_and_removes_partial_files(stack: Stack):
    ids = stack.media_ids(6, min_size=1_500_000)
    started = await stack.start_batch(ids, max_concurrent=3)
    await stack.until_serving(3)
    cancelled = await stack.cancel(started["batch_id"])
    assert cancelled["status"] == "cancelled" and cancelled["total_files"] == 6
    assert cancelled["cancelled_downloads"] >= 3
    await stack.until_serving(0, within=1.5)
    body = await stack.until_finished(started["batch_id"], within=10)
    assert body["overall_status"] == "cancelled"
    assert {f["status"] for f in body["files"]} <= {"cancelled", "completed"}

    async def no_parts():
        return not list(stack.media_root.rglob("*.part"))
    await until(no_parts, 5, what="partial files removed")
    # nothing starts again after the cancel
    assert (await stack.sim_stats())["serving"] == 0
    again = await stack.cancel(started["batch_id"])
    assert again["status"] == "already_finished"


async def test_single_file_api_works_while_a_batch_runs(stack: Stack):
    ids = stack.media_ids(8)
    batch = await stack.start_batch(ids[:6], max_concurrent=2)
    await stack.until_serving(2)
    r = await stack.http.post(f"/api/media/download/{ids[7]}")
    assert r.status_code == 200, r.text
    single = r.json()
    assert single["status"] == "started"

    async def single_done():
        r = await stack.http.get(f"/api/media/status/{ids[7]}")
        return r.json() if r.status_code == 200 and r.json()["status"] == "completed" else None
    status = await until(single_done, 30, what="single download completed")
    sizes = {m.message_id: m.size for m in stack.sim_messages()}
    assert sha256(Path(status["file_path"])) == expected_sha256(ids[7], sizes[ids[7]])
    # asking again for a finished file answers at once
    again = (await stack.http.post(f"/api/media/download/{ids[7]}")).json()
    assert again["status"] == "already_downloaded" and again["download_url"]
    assert (await stack.until_finished(batch["batch_id"]))["overall_status"] == "completed"


@pytest.mark.stack(global_cap=4)
async def test_global_cap_bounds_downloads_across_batches(stack: Stack):
    ids = stack.media_ids(10)
    batches = [await stack.start_batch(ids[:5], max_concurrent=5),
               await stack.start_batch(ids[5:], max_concurrent=5)]
    async with Watcher(stack, [b["batch_id"] for b in batches]) as watch:
        for b in batches:
            assert (await stack.until_finished(b["batch_id"]))["overall_status"] == "completed"
    assert 3 <= watch.max_serving <= 4
    assert (await stack.sim_stats())["max_serving"] <= 4


@pytest.mark.stack(parts_per_file=1)
async def test_a_killed_downloader_loses_nothing_and_the_file_resumes(stack: Stack):
    [m] = stack.media_ids(1, min_size=2_000_000)  # three parts: 1 MiB, 1 MiB, the rest
    size = next(x.size for x in stack.sim_messages() if x.message_id == m)
    # Its second part trickles (minutes): the first and the last land on disk and the
    # file is still downloading when the downloaders die, however loaded the machine.
    await sim_client.set_faults(stack.sim_url, slow={"message_id": m, "offset": PART_SIZE,
                                                     "bandwidth": 5_000})
    started = await stack.start_batch([m], max_concurrent=1)

    async def a_third_on_disk():
        body = await stack.status(started["batch_id"])
        f = body["files"][0] if body else {}
        return f.get("status") == "downloading" and f.get("downloaded_size", 0) >= size // 3
    await until(a_third_on_disk, 20, what="a third downloaded")
    for name in ("downloader-1", "downloader-2"):
        stack.kill(name)  # SIGKILL: no clean-up, no hand-back
    await stack.until_serving(0)  # the dead downloader's requests are gone
    sent_before = (await stack.sim_stats())["bytes_sent_by_id"][m]
    stack.spawn("downloader-3", "tgdl.downloader", TGDL_REPLICA="downloader-3")
    final = await stack.until_finished(started["batch_id"], within=60)
    assert final["overall_status"] == "completed"
    path = Path(final["files"][0]["file_path"])
    assert sha256(path) == expected_sha256(m, size)
    # the resume asked only for the part that was not on disk (the first answer for it
    # was the slow one, now given at full speed)
    again = (await stack.sim_stats())["bytes_sent_by_id"][m] - sent_before
    assert again == PART_SIZE, f"the resumed download fetched {again} bytes of {size}"


async def test_orchestrator_restart_mid_batch_keeps_going(stack: Stack):
    ids = stack.media_ids(8)
    started = await stack.start_batch(ids, max_concurrent=2)
    await stack.until_serving(2)
    stack.kill("orchestrator")
    stack.spawn("orchestrator-2", "tgdl.orchestrator")
    final = await stack.until_finished(started["batch_id"], within=60)
    assert final["overall_status"] == "completed" and final["completed"] == 8


async def test_flood_wait_shows_waiting_then_completes(stack: Stack):
    [m] = stack.media_ids(1)
    await sim_client.set_faults(stack.sim_url, flood_wait={"message_id": m, "seconds": 3,
                                                            "times": 1})
    started = await stack.start_batch([m], max_concurrent=1)

    async def waiting():
        body = await stack.status(started["batch_id"])
        f = body["files"][0] if body else {}
        return f if f.get("status") == "waiting" else None
    f = await until(waiting, 15, what="file shown as waiting")
    assert 1 <= f["wait_seconds"] <= 4
    body = await stack.status(started["batch_id"])
    assert body["failed"] == 0 and body["overall_status"] == "in_progress"
    final = await stack.until_finished(started["batch_id"], within=30)
    assert final["overall_status"] == "completed"


async def test_permanent_failures_are_reported_with_reasons(stack: Stack):
    deleted = [x.message_id for x in stack.sim_messages() if x.deleted and x.media_kind][:1]
    no_media = [x.message_id for x in stack.sim_messages() if x.media_kind is None][:1]
    good = stack.media_ids(1)
    started = await stack.start_batch([*good, *deleted, *no_media, 999_999])
    refused = {f["message_id"]: f["error"] for f in started["failed_to_start"]}
    assert refused == {**{m: "no_media" for m in no_media}, 999_999: "message_not_found"}
    final = await stack.until_finished(started["batch_id"])
    assert final["overall_status"] == "failed"
    files = {f["message_id"]: f for f in final["files"]}
    assert files[good[0]]["status"] == "completed"
    for m in deleted:
        assert files[m]["status"] == "failed" and files[m]["error"] == "message_deleted"
        assert files[m]["suggestion"]
    assert "1 of" in final["summary"] or "completed" in final["summary"]


async def test_a_start_where_nothing_can_start_is_readable_as_soon_as_it_is_answered(
        stack: Stack):
    no_media = [x.message_id for x in stack.sim_messages() if x.media_kind is None][:1]
    started = await stack.start_batch([*no_media, 999_999])
    assert started["status"] == "failed" and started["started_downloads"] == []
    # read at once, as a client does after the answer: the batch is there, failed
    response = await stack.http.get(f"/api/media/batch-status/{started['batch_id']}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["overall_status"], body["failed"], body["total_files"]) == ("failed", 2, 2)

    # a file on disk and one that cannot start: the answer says what the batch ends as
    [good] = stack.media_ids(1)
    await stack.until_finished((await stack.start_batch([good]))["batch_id"])
    mixed = await stack.start_batch([good, 999_999])
    assert (mixed["status"], mixed["already_downloaded"]) == ("failed", [good])
    body = (await stack.http.get(f"/api/media/batch-status/{mixed['batch_id']}")).json()
    assert body["overall_status"] == "failed"


async def test_too_many_ids_are_refused_by_the_orchestrator_as_a_422(stack: Stack):
    response = await stack.http.post("/api/media/batch-download",
                                     json={"message_ids": list(range(1, 52))})
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "too_many_files" and "at most 50" in body["detail"]
    assert body["suggestion"]


async def test_sigterm_stops_every_service_cleanly(stack: Stack):
    for name, service in list(stack.services.items()):
        assert service.stop(signal.SIGTERM, timeout=15) == 0, f"{name} exited uncleanly"


async def test_single_file_cancel_stops_it_but_not_a_batch_sharing_the_file(stack: Stack):
    big = stack.media_ids(2, min_size=2_000_000)
    alone, shared = big
    r = await stack.http.post(f"/api/media/download/{alone}")
    assert r.json()["status"] == "started"
    await stack.until_serving(1)
    cancelled = (await stack.http.post(f"/api/media/cancel/{alone}")).json()
    assert cancelled["status"] == "cancelled"
    await stack.until_serving(0, within=1.5)

    async def shows_cancelled():
        body = (await stack.http.get(f"/api/media/status/{alone}")).json()
        return body if body["status"] == "cancelled" else None
    await until(shows_cancelled, 10, what="single download shown cancelled")
    assert not list(stack.media_root.rglob("*.part"))
    nothing = (await stack.http.post(f"/api/media/cancel/{alone}")).json()
    assert nothing["status"] == "not_downloading"

    # A batch and a single request share one download; cancelling the single one leaves
    # the batch's download running to the end.
    batch = await stack.start_batch([shared], max_concurrent=1)
    await stack.until_serving(1)
    single = (await stack.http.post(f"/api/media/download/{shared}")).json()
    assert single["status"] == "already_downloading"
    assert (await stack.http.post(f"/api/media/cancel/{shared}")).json()["status"] == "cancelled"
    final = await stack.until_finished(batch["batch_id"])
    assert final["overall_status"] == "completed"
    sizes = {m.message_id: m.size for m in stack.sim_messages()}
    assert (await stack.sim_stats())["bytes_sent_by_id"][shared] == sizes[shared]


async def test_two_orchestrators_share_batches_without_corrupting_them(stack: Stack):
    """Commands and outcomes are spread over both replicas; appends to one batch from
    both meet the expected-sequence check and are decided again, never lost."""
    stack.spawn("orchestrator-b", "tgdl.orchestrator", TGDL_REPLICA="orchestrator-b")
    ids = stack.media_ids(12)
    batches = [await stack.start_batch(ids[i:i + 4], max_concurrent=2) for i in (0, 4, 8)]
    async with Watcher(stack, [b["batch_id"] for b in batches]) as watch:
        finals = [await stack.until_finished(b["batch_id"], within=90) for b in batches]
    assert all(f["overall_status"] == "completed" and f["completed"] == 4 for f in finals)
    assert all(s["downloading"] <= 2 for s in watch.snapshots)
    stats = await stack.sim_stats()
    sizes = {m.message_id: m.size for m in stack.sim_messages()}
    assert all(stats["bytes_sent_by_id"][m] == sizes[m] for m in ids)
    for name in ("orchestrator", "orchestrator-b"):
        log = stack.services[name].log.read_text()
        assert "Traceback" not in log, log[-2000:]
