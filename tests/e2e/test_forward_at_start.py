"""Over HTTP, every service its own process: a forward of a file already on disk under
another message's name is answered as already downloaded at the start, by the batch API
and the single-file API, and no job is queued for it."""

from __future__ import annotations

from pathlib import Path

from e2e_stack import Stack
from waiting import until

from tgdl.contracts.jobs import FileRecord
from tgdl.simtelegram import client as sim_client

PUBLISHED = "tgdl_orchestrator_jobs_published_total"


async def test_a_forward_of_a_file_on_disk_is_already_downloaded_at_the_start(
        stack: Stack, nc):
    messages = [m for m in stack.sim_messages()
                if m.media_kind is not None and not m.deleted and not m.forbidden]
    by_file: dict[int, list] = {}
    for m in messages:
        by_file.setdefault(m.file_id, []).append(m)
    original, forward, single = next(ms for ms in by_file.values() if len(ms) >= 3)[:3]
    first = await stack.start_batch([original.message_id])
    fetched = (await stack.until_finished(first["batch_id"]))["files"][0]
    kv = await nc.jetstream().key_value(stack.names.files_bucket)

    async def recorded():  # the downloader records the complete copy beside the job's end
        record = FileRecord.model_validate_json((await kv.get(original.location().file_key)).value)
        return record.relative_path is not None
    await until(recorded, 20, what="the copy recorded")
    await sim_client.reset_stats(stack.sim_url)
    published = await stack.summed("orchestrator", PUBLISHED)

    started = await stack.start_batch([forward.message_id])
    assert started["started_downloads"] == []
    assert started["already_downloaded"] == [forward.message_id]
    body = await stack.until_finished(started["batch_id"])
    [f] = body["files"]
    assert (f["status"], f["already_downloaded"], f["reason"], f["same_file_as"]) == (
        "completed", True, "same_file", original.message_id)
    assert Path(f["file_path"]).stat().st_ino == Path(fetched["file_path"]).stat().st_ino
    served = await stack.http.get(f["download_url"])
    assert served.status_code == 200 and len(served.content) == original.size

    r = await stack.http.post(f"/api/media/download/{single.message_id}")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "already_downloaded", r.json()
    mine = (await stack.http.get(f"/api/media/status/{single.message_id}")).json()
    assert (mine["status"], mine["reason"], mine["same_file_as"]) == (
        "completed", "same_file", original.message_id)

    assert (await stack.sim_stats())["file_requests"] == {}
    assert await stack.summed("orchestrator", PUBLISHED) == published  # no job for either
