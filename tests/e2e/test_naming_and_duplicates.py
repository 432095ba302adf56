"""Where files go (naming templates) and one download per Telegram file, through the
HTTP API with every service its own process."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest
from e2e_stack import Stack

from tgdl.contracts.jobs import FileRecord
from tgdl.contracts.paths import NameTemplate
from tgdl.simtelegram import client as sim_client
from tgdl.simtelegram.content import expected_sha256

pytestmark = pytest.mark.e2e

TEMPLATE = "{chat}/{kind}s/{date:%Y-%m}/{message_id}_{caption:12}_{name}"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_a_batch_with_a_template_puts_every_file_where_it_says(stack: Stack):
    ids = stack.media_ids(4)
    messages = {m.message_id: m for m in stack.sim_messages()}
    r = await stack.http.post("/api/media/batch-download", json={
        "message_ids": ids, "name_template": TEMPLATE})
    assert r.status_code == 200, r.text
    body = await stack.until_finished(r.json()["batch_id"])
    assert body["overall_status"] == "completed", body
    template = NameTemplate.parse(TEMPLATE)
    for f in body["files"]:
        m = messages[f["message_id"]]
        rel = template.render(m.to_entry())
        assert rel.parts[0] == m.chat and rel.parts[2] == m.date.strftime("%Y-%m")
        assert f["download_url"] == f"/media/{rel}"
        path = stack.media_root / rel
        assert Path(f["file_path"]).resolve() == path.resolve()
        assert sha256(path) == expected_sha256(m.message_id, m.size)
        served = await stack.http.get(f["download_url"])
        assert served.status_code == 200 and len(served.content) == m.size
    # the default layout was not used
    assert not (stack.media_root / "photos").exists() and not (stack.media_root / "videos").exists()

    # a second batch with the same template finds them at the rendered paths: nothing to do
    again = await stack.http.post("/api/media/batch-download", json={
        "message_ids": ids, "name_template": TEMPLATE})
    assert sorted(again.json()["already_downloaded"]) == sorted(ids)
    # a template that could give two messages one path is refused, saying why
    bad = await stack.http.post("/api/media/batch-download", json={
        "message_ids": ids, "name_template": "{chat}/{caption}"})
    assert bad.status_code == 422 and "{message_id}" in bad.json()["detail"]
    assert PurePosixPath(f["download_url"]).name.startswith(str(f["message_id"]))


# --- one download per Telegram file ---------------------------------------------------------


def forwarded_groups(stack: Stack) -> dict[int, list[int]]:
    """file id -> the messages carrying it, for files forwarded at least once."""
    groups: dict[int, list[int]] = {}
    for m in stack.sim_messages():
        if m.media_kind is not None and not m.deleted and not m.forbidden:
            groups.setdefault(m.file_id, []).append(m.message_id)
    return {f: ids for f, ids in groups.items() if len(ids) > 1}


async def test_forwards_of_one_file_download_it_once_and_link_the_rest(stack: Stack):
    groups = forwarded_groups(stack)
    triple = next(ids for ids in groups.values() if len(ids) >= 3)  # one file, 3+ messages
    pair = next(ids for ids in groups.values() if len(ids) == 2)
    by_id = {m.message_id: m for m in stack.sim_messages()}
    await sim_client.reset_stats(stack.sim_url)
    # the forwards first in the request: whichever message fetches, the others wait for it
    batch = await stack.start_batch([*reversed(triple), pair[1]], max_concurrent=5)
    body = await stack.until_finished(batch["batch_id"])
    assert body["overall_status"] == "completed", body
    stats = await stack.sim_stats()
    fetched = {int(f): n for f, n in stats["file_requests"].items()}
    assert set(fetched) == {by_id[triple[0]].file_id, by_id[pair[1]].file_id}
    # each file's parts were asked for once: not one byte more than one copy of each
    assert stats["bytes_sent"] == by_id[triple[0]].size + by_id[pair[1]].size

    files = {f["message_id"]: f for f in body["files"]}
    linked = [f for f in files.values() if f.get("reason") == "same_file"]
    assert len(linked) == len(triple) - 1  # of a file's messages, one downloads it
    inodes = {Path(files[m]["file_path"]).stat().st_ino for m in triple}
    assert len(inodes) == 1  # the same inode under every message's name
    for f in linked:
        assert f["already_downloaded"] is True and f["same_file_as"] in triple
        assert f["same_file_as"] != f["message_id"]
        assert files[f["same_file_as"]].get("reason") is None  # that one was downloaded
    for m in triple:
        assert sha256(Path(files[m]["file_path"])) == expected_sha256(by_id[m].file_id,
                                                                       by_id[m].size)
        served = await stack.http.get(files[m]["download_url"])
        assert served.status_code == 200 and len(served.content) == by_id[m].size

    # later, a forward of a file downloaded before: linked, nothing fetched
    await sim_client.reset_stats(stack.sim_url)
    later = await stack.start_batch([pair[0]])
    done = await stack.until_finished(later["batch_id"])
    [f] = done["files"]
    assert (f["status"], f["already_downloaded"], f["reason"], f["same_file_as"]) == (
        "completed", True, "same_file", pair[1])
    assert Path(f["file_path"]).stat().st_ino == Path(files[pair[1]]["file_path"]).stat().st_ino
    assert (await stack.sim_stats())["file_requests"] == {}


async def test_concurrent_batches_wanting_one_file_fetch_it_once(stack: Stack):
    ids = next(ids for ids in forwarded_groups(stack).values() if len(ids) >= 3)
    by_id = {m.message_id: m for m in stack.sim_messages()}
    await sim_client.reset_stats(stack.sim_url)
    started = [await stack.start_batch([m]) for m in ids[:3]]
    bodies = [await stack.until_finished(b["batch_id"]) for b in started]
    assert all(b["overall_status"] == "completed" for b in bodies), bodies
    stats = await stack.sim_stats()
    assert set(stats["file_requests"]) == {by_id[ids[0]].file_id}
    assert stats["bytes_sent"] == by_id[ids[0]].size  # one copy's bytes, not three
    reasons = sorted(str(b["files"][0].get("reason")) for b in bodies)
    assert reasons == ["None", "same_file", "same_file"]


@pytest.mark.stack(ack_wait=1)
async def test_a_record_left_by_a_dead_downloader_is_taken_over(stack: Stack, nc):
    m = next(m for m in stack.sim_messages() if m.message_id == stack.media_ids(1)[0])
    kv = await nc.jetstream().key_value(stack.names.files_bucket)
    # a job that claimed the file, then its downloader died: nobody refreshes the record
    await kv.put(m.location().file_key,
                 FileRecord(job_id="batch_dead:999", message_id=999).model_dump_json().encode())
    await sim_client.reset_stats(stack.sim_url)
    started = await stack.start_batch([m.message_id])
    body = await stack.until_finished(started["batch_id"], within=30)
    [f] = body["files"]
    assert f["status"] == "completed" and f.get("reason") is None  # fetched, not linked
    assert set((await stack.sim_stats())["file_requests"]) == {m.file_id}
    record = FileRecord.model_validate_json((await kv.get(m.location().file_key)).value)
    assert (record.message_id, record.relative_path) == (
        m.message_id, str(Path(f["file_path"]).relative_to(stack.media_root)))


async def test_the_cli_downloads_with_a_template_and_refuses_a_bad_one(stack: Stack):
    ids = stack.media_ids(2)
    env = {**os.environ, "TGDL_URL": str(stack.http.base_url), "PYTHONUNBUFFERED": "1"}

    def tgdl(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tgdl.launcher", *args], env=env,
                              capture_output=True, text=True, timeout=90, cwd=stack.workdir)

    run = await asyncio.to_thread(tgdl, "download", *map(str, ids), "--json",
                                  "--name-template", "{chat}/{message_id}_{stem}.{ext}")
    assert run.returncode == 0, run.stdout + run.stderr
    for f in json.loads(run.stdout)["files"]:
        path = Path(f["file_path"])
        assert path.parent == stack.media_root / "sim_demo" and path.is_file()
        assert path.name.startswith(f"{f['message_id']}_")
    bad = await asyncio.to_thread(tgdl, "download", str(ids[0]), "--name-template", "{name}")
    assert bad.returncode != 0 and "{message_id}" in bad.stdout + bad.stderr


async def test_the_page_starts_a_batch_with_a_template_and_shows_why_one_is_refused(
        stack: Stack):
    from test_web_page import CHROMIUM, async_playwright, expect

    if CHROMIUM is None:
        pytest.skip("no chromium found")
    m = stack.media_ids(1)[0]
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            await page.goto(str(stack.http.base_url))
            bar = page.get_by_role("region", name="Download the selected messages")
            box = page.locator(f'#messages tr[data-id="{m}"] input[type=checkbox]')

            await box.check()
            await bar.get_by_label("File names").fill("{chat}/{name}")
            await bar.get_by_role("button", name="Start download of 1").click()
            await expect(page.locator("#notice")).to_contain_text("{message_id}")

            await bar.get_by_label("File names").fill("{chat}/{kind}/{message_id}_{name}")
            await bar.get_by_role("button", name="Start download of 1").click()
            await expect(page.locator("#batch-id")).to_have_text(re.compile("^batch_"))
            batch_id = await page.locator("#batch-id").text_content()
        finally:
            await browser.close()
    body = await stack.until_finished(batch_id)
    [f] = body["files"]
    message = next(x for x in stack.sim_messages() if x.message_id == m)
    rel = NameTemplate.parse("{chat}/{kind}/{message_id}_{name}").render(message.to_entry())
    assert rel.parts[0] == "sim_demo" and (stack.media_root / rel).is_file()
    assert f["download_url"] == f"/media/{rel}"
