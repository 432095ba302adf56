"""Watch rules end to end, every service a process: a rule starts batches of the new
matching messages posted to the simulated Telegram, and only those; paused it starts
nothing (and catches up when resumed); a catalog service killed mid-way comes back with
its rules running and starts nothing twice."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from e2e_stack import Stack
from waiting import until

from tgdl.simtelegram import client as sim_client
from tgdl.simtelegram.content import expected_sha256

pytestmark = pytest.mark.e2e
CHAT = "sim_demo"


async def post(stack: Stack, kind: str | None, size: int | None, caption: str) -> int:
    entry = await sim_client.post_message(stack.sim_url, CHAT, media_kind=kind, size=size,
                                          caption=caption)
    return entry.message_id


async def rule_batches(stack: Stack, rule_id: str) -> list[dict]:
    r = await stack.http.get("/api/media/batches", params={"limit": 100})
    assert r.status_code == 200, r.text
    return [b for b in r.json()["items"] if b["rule_id"] == rule_id]


async def started_ids(stack: Stack, rule_id: str) -> list[int]:
    """Every message the rule's batches hold (a message twice if started twice)."""
    ids: list[int] = []
    for batch in await rule_batches(stack, rule_id):
        ids += [f["message_id"] for f in (await stack.status(batch["batch_id"]))["files"]]
    return sorted(ids)


async def until_started(stack: Stack, rule_id: str, wanted: list[int]) -> None:
    async def all_there():
        return await started_ids(stack, rule_id) == sorted(wanted)
    await until(all_there, 30, every=0.2, what=f"rule {rule_id} starting {wanted}")


async def in_catalog(stack: Stack, message_id: int, caption: str) -> None:
    async def listed():
        r = await stack.http.get("/api/messages", params={"chat": CHAT, "q": caption})
        return any(m["message_id"] == message_id for m in r.json()["items"])
    await until(listed, 30, every=0.2, what=f"message {message_id} in the catalog")


@pytest.mark.stack(sync_interval=0.3, max_batch_ids=2)
async def test_a_rule_downloads_new_matching_media_pauses_and_survives_a_restart(
        stack: Stack):
    r = await stack.http.post("/api/rules", json={
        "chat": CHAT, "media_types": ["video", "document"], "min_size": 200_000,
        "caption_regex": "^keep", "max_concurrent": 2})
    assert r.status_code == 201, r.text
    rule = r.json()
    rule_id = rule["rule_id"]
    assert (rule["enabled"], rule["batches_started"]) == (True, 0)

    # three that match (so two batches: the batch limit is 2), four that do not
    matching = [await post(stack, "video", 400_000, "keep: first"),
                await post(stack, "document", 300_000, "keep: second"),
                await post(stack, "video", 250_000, "keep: third")]
    others = [await post(stack, "photo", 400_000, "keep: a photo"),
              await post(stack, "video", 100_000, "keep: too small"),
              await post(stack, "video", 400_000, "not this one"),
              await post(stack, None, None, "keep: just text")]
    await until_started(stack, rule_id, matching)
    batches = await rule_batches(stack, rule_id)
    assert sorted(b["total_files"] for b in batches) == [1, 2]
    for batch in batches:
        done = await stack.until_finished(batch["batch_id"])
        assert done["overall_status"] == "completed", done
    for m, size in zip(matching, (400_000, 300_000, 250_000), strict=True):
        [path] = stack.media_root.rglob(f"{m}_*")
        assert hashlib.sha256(path.read_bytes()).hexdigest() == expected_sha256(m, size)
    for m in others:
        assert not list(stack.media_root.rglob(f"{m}_*"))

    # paused: a matching message starts nothing ...
    r = await stack.http.patch(f"/api/rules/{rule_id}", json={"enabled": False})
    assert (r.status_code, r.json()["enabled"]) == (200, False), r.text
    while_paused = await post(stack, "video", 300_000, "keep: while paused")
    await in_catalog(stack, while_paused, "keep: while paused")
    await asyncio.sleep(1.0)  # several sync rounds (0.3 s) after the catalog has it
    assert await started_ids(stack, rule_id) == sorted(matching)
    # ... until resumed: then what arrived meanwhile starts
    r = await stack.http.patch(f"/api/rules/{rule_id}", json={"enabled": True})
    assert r.status_code == 200, r.text
    await until_started(stack, rule_id, [*matching, while_paused])

    # the catalog service dies; messages arrive meanwhile; back, it starts each once
    stack.kill("catalog")
    after_restart = [await post(stack, "document", 200_000, "keep: while down"),
                     await post(stack, "video", 220_000, "keep: also while down")]
    stack.spawn("catalog", "tgdl.catalog")
    await until_started(stack, rule_id, [*matching, while_paused, *after_restart])
    for batch in await rule_batches(stack, rule_id):
        await stack.until_finished(batch["batch_id"])
    listed = (await stack.http.get("/api/rules")).json()["rules"]
    assert [(x["rule_id"], x["files_started"]) for x in listed] == [(rule_id, 6)]

    r = await stack.http.delete(f"/api/rules/{rule_id}")
    assert r.status_code == 200, r.text
    assert (await stack.http.get("/api/rules")).json()["rules"] == []


async def tgdl(stack: Stack, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "TGDL_URL": str(stack.http.base_url), "COLUMNS": "160"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tgdl.launcher", *args, env=env, cwd=stack.workdir,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_watch_rules_and_unwatch_from_the_command_line(stack: Stack):
    code, out, err = await tgdl(stack, "watch", CHAT, "--type", "video,document",
                                "--min-size", "10MB", "--caption-matches", "^big")
    assert code == 0, err
    assert "watching sim_demo for video,document >= 10.0 MB caption ~ ^big" in out
    rule_id = out.split(":")[0]

    code, _, err = await tgdl(stack, "watch", CHAT, "--caption-matches", "(unclosed")
    assert code == 2 and "caption_regex: not a valid regular expression" in err
    code, _, err = await tgdl(stack, "watch", "no_such_chat")
    assert code == 2 and "unknown_chat" in err

    code, out, _ = await tgdl(stack, "rules")
    assert code == 0 and rule_id in out and "on" in out
    code, out, _ = await tgdl(stack, "rules", "pause", rule_id)
    assert (code, out.strip()) == (0, f"{rule_id} paused")
    code, out, _ = await tgdl(stack, "rules", "--json")
    [rule] = json.loads(out)["rules"]
    assert (rule["rule_id"], rule["enabled"], rule["min_size"]) == (rule_id, False, 10**7)

    code, out, _ = await tgdl(stack, "unwatch", rule_id)
    assert code == 0 and "no longer watched" in out
    code, _, err = await tgdl(stack, "unwatch", rule_id)
    assert code == 2 and "rule_not_found" in err


CHROMIUM = next((p for p in (os.environ.get("TGDL_CHROMIUM"), "/usr/bin/chromium",
                             shutil.which("chromium")) if p and Path(p).exists()), None)


@pytest.mark.stack(sync_interval=0.3)
async def test_watch_a_chat_from_the_page_and_see_what_its_rule_started(stack: Stack):
    playwright = pytest.importorskip("playwright.async_api", reason="playwright is missing")
    if CHROMIUM is None:
        pytest.skip("no chromium found (/usr/bin/chromium, or set TGDL_CHROMIUM)")
    expect = playwright.expect
    async with playwright.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            await page.goto(str(stack.http.base_url))
            await page.get_by_label("Watch chat").fill(CHAT)
            await page.get_by_role("checkbox", name="watch video", exact=True).check()
            await page.get_by_label("Smallest file").fill("100kB")
            await page.get_by_label("Caption matches").fill("^page")
            await page.get_by_role("button", name="Watch", exact=True).click()
            await expect(page.locator("#notice")).to_contain_text(f"Watching {CHAT} (rule_")
            rules = page.locator("#rules li")
            await expect(rules).to_have_count(1)
            await expect(rules).to_contain_text(
                f"{CHAT}: video from 100 kB, caption matching ^page")
            rule_id = await rules.first.get_attribute("data-rule")

            wanted = await post(stack, "video", 200_000, "page: watched")
            await until_started(stack, rule_id, [wanted])
            await page.reload()
            await expect(page.locator("#batches li").first).to_contain_text(
                f"started by watch rule {rule_id}")
            await expect(rules).to_contain_text("started 1 batches, 1 files")

            await page.get_by_role("button", name=f"Pause watch rule {rule_id}").click()
            await expect(rules).to_contain_text("paused")
            await page.get_by_role("button", name=f"Delete watch rule {rule_id}").click()
            await expect(rules).to_have_text(["No watch rules yet."])
            await page.get_by_label("Watch chat").fill("no_such_chat")
            await page.get_by_role("button", name="Watch", exact=True).click()
            await expect(page.locator("#notice")).to_contain_text("no chat 'no_such_chat'")
        finally:
            await browser.close()
