"""The web page in a real browser (Playwright driving Debian's chromium) against a running
stack: filter, select all matching, start, watch the bars move and complete, cancel
another batch, at desktop and phone width. Screenshots land in the test's folder, or in
TGDL_SCREENSHOT_DIR when set (how docs/web-page.png is made)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from e2e_stack import Stack
from waiting import until

from tgdl.simtelegram import client as sim_client

playwright_api = pytest.importorskip(
    "playwright.async_api", reason="playwright is not installed (pip install -r requirements.txt)")
async_playwright, expect = playwright_api.async_playwright, playwright_api.expect

pytestmark = pytest.mark.e2e

CHROMIUM = next((p for p in (os.environ.get("TGDL_CHROMIUM"), "/usr/bin/chromium",
                             shutil.which("chromium"), shutil.which("chromium-browser"))
                 if p and Path(p).exists()), None)
SLOW = 30_000  # ms: a whole batch may take this long on a busy machine


@pytest.fixture
async def browser():
    if CHROMIUM is None:
        pytest.skip("no chromium found (/usr/bin/chromium; `apt-get install chromium`, as "
                    ".ci/run does, or set TGDL_CHROMIUM)")
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            await browser.close()


async def watched_page(browser):
    """A page, and the errors its console shows (a request of the page's that fails, a
    script error): a page that works shows none."""
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return page, errors


def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("TGDL_SCREENSHOT_DIR") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# Slow enough that progress is seen between 0 and 100 % (the read model takes progress
# about once a second), quick enough for a short test.
@pytest.mark.stack(sim_bandwidth=500_000)
async def test_filter_select_start_watch_and_cancel_in_a_browser(stack: Stack, browser,
                                                                  tmp_path):
    out = shots(tmp_path)
    page, console_errors = await watched_page(browser)
    await page.goto(str(stack.http.base_url))

    # Filter on the server: videos of at least 1.8 MB.
    videos = [m.message_id for m in stack.sim_messages()
              if m.media_kind == "video" and m.size >= 1_800_000]
    await page.get_by_role("checkbox", name="video", exact=True).check()
    await page.get_by_label("Min size").fill("1.8MB")
    await page.get_by_role("button", name="Apply filters").click()
    await expect(page.locator("#match-count")).to_have_text(f"{len(videos)} matching messages")
    rows = page.locator("#messages tr")
    await expect(rows).to_have_count(len(videos))
    assert [int(i) for i in await rows.evaluate_all("rs => rs.map(r => r.dataset.id)")] == videos

    # Select all matching, choose the batch's settings, start with the keyboard.
    await page.get_by_role("button", name="Select all matching").click()
    bar = page.get_by_role("region", name="Download the selected messages")
    await expect(bar.locator("#selected-count")).to_have_text(f"{len(videos)} selected")
    await bar.get_by_label("Max concurrent").fill("5")
    start = bar.get_by_role("button", name=f"Start download of {len(videos)}")
    await start.focus()
    await page.keyboard.press("Enter")
    await expect(page.locator("#batch-h")).to_be_focused()  # the opened batch takes focus
    batch_id = await page.locator("#batch-id").text_content()
    assert batch_id and batch_id.startswith("batch_")

    # The bars move: some file is seen part-way, then every file completes.
    await page.wait_for_function(
        "() => [...document.querySelectorAll('#files progress')]"
        ".some(p => p.value > 0 && p.value < 100)", timeout=SLOW)
    await page.locator("#batches-h").scroll_into_view_if_needed()
    await page.evaluate("() => window.scrollTo(0, document.getElementById('batches-h')"
                        ".getBoundingClientRect().top + window.scrollY - 240)")
    await page.screenshot(path=out / "web-page-in-flight.png")
    await expect(page.locator("#files tr[data-status=completed]")).to_have_count(
        len(videos), timeout=SLOW)
    await expect(page.locator("#batch-state")).to_have_text("· completed")
    await expect(page.locator("#batch-progress")).to_have_attribute("value", "100")
    links = page.locator("#files a")
    await expect(links).to_have_count(len(videos))
    assert all(h.startswith("/media/") for h in await links.evaluate_all(
        "as => as.map(a => a.getAttribute('href'))"))
    item = page.locator(f"#batches li[data-batch={batch_id}]")
    await expect(item).to_contain_text("completed · 100%", timeout=SLOW)
    await expect(rows.first).to_contain_text("downloaded")
    await page.screenshot(path=out / "web-page.png", full_page=True)  # the README's picture

    # Another batch, cancelled while Telegram makes its first file wait: documents, one
    # at a time; the wait counts down on the page between snapshots. (A flood wait holds
    # off the whole account, so it is short: the next batch waits it out.)
    documents = [m.message_id for m in stack.sim_messages()
                 if m.media_kind == "document" and not m.deleted and not m.forbidden]
    await sim_client.set_faults(stack.sim_url, flood_wait={"message_id": documents[0],
                                                            "seconds": 8})
    await page.get_by_role("button", name="Clear", exact=True).click()
    await page.get_by_role("checkbox", name="document", exact=True).check()
    await page.get_by_role("button", name="Apply filters").click()
    await expect(rows.first).to_contain_text("document")
    await page.get_by_role("button", name="Select all matching").click()
    await bar.get_by_label("Max concurrent").fill("1")
    await bar.get_by_role("button", name="Start download of").click()
    await expect(page.locator("#batch-id")).not_to_have_text(batch_id)
    countdown = page.locator(f"#files tr[data-id='{documents[0]}'] .countdown")
    await expect(countdown).to_contain_text("Telegram rate limit: resumes in", timeout=SLOW)
    first = await countdown.text_content()
    await expect(countdown).not_to_have_text(first, timeout=SLOW)  # it ticks
    await page.get_by_role("button", name="Cancel batch").click()
    await expect(page.locator("#batch-state")).to_have_text("· cancelled", timeout=SLOW)
    await expect(page.locator("#notice")).to_contain_text("Batch cancelled")
    await expect(page.locator("#files tr[data-status=cancelled]").first).to_be_visible()
    await expect(page.get_by_role("button", name="Cancel batch")).to_be_disabled()
    await sim_client.clear_faults(stack.sim_url)

    # A file that cannot be downloaded says why and what to do.
    gone = next(m for m in stack.sim_messages() if m.deleted and m.file_name)
    await page.get_by_role("button", name="Clear", exact=True).click()
    await page.get_by_label("Text").fill(gone.file_name)
    await page.get_by_role("button", name="Apply filters").click()
    await expect(page.locator(f"#messages tr[data-id='{gone.message_id}']")).to_be_visible()
    await page.get_by_role("button", name="Select all matching").click()
    await bar.get_by_role("button", name="Start download of").click()
    failed = page.locator(f"#files tr[data-id='{gone.message_id}'][data-status=failed]")
    await expect(failed).to_contain_text("message_deleted", timeout=SLOW)
    await expect(failed.locator(".suggestion")).not_to_be_empty()

    # A bad filter is explained, not a blank page.
    await page.get_by_label("Min size").fill("five")
    await page.get_by_role("button", name="Apply filters").click()
    await expect(page.locator("#notice")).to_contain_text('Min size: "five" is not a size')

    # Phone width: nothing wider than the screen, the action bar still at hand.
    await page.set_viewport_size({"width": 390, "height": 844})
    await page.get_by_label("Min size").fill("")
    await page.get_by_role("button", name="Apply filters").click()
    assert await page.evaluate(
        "() => document.documentElement.scrollWidth <= window.innerWidth")
    # ...and the messages' list shows each file and its state without scrolling sideways
    assert await page.evaluate("""() => {
        const list = document.querySelector('#messages').closest('.scroll');
        return list.scrollWidth <= list.clientWidth; }""")
    await expect(bar.get_by_role("button", name="Start download")).to_be_in_viewport()
    await page.screenshot(path=out / "web-page-phone.png", full_page=False)
    assert (out / "web-page.png").stat().st_size > 10_000
    assert console_errors == []


# A few seconds per file, one part at a time: a pause lands with files part-way.
@pytest.mark.stack(sim_bandwidth=400_000, parts_per_file=1)
async def test_pause_resume_limit_and_priority_from_the_batch_view(stack: Stack, browser,
                                                                   tmp_path):
    out = shots(tmp_path)
    page, console_errors = await watched_page(browser)
    await page.goto(str(stack.http.base_url))
    ids = stack.media_ids(3, min_size=1_500_000)
    await page.get_by_label("Min size").fill("1.5MB")
    await page.get_by_role("button", name="Apply filters").click()
    for m in ids:  # the first three of the big files
        await page.locator(f"#messages tr[data-id='{m}'] input[type=checkbox]").check()
    bar = page.get_by_role("region", name="Download the selected messages")
    await bar.get_by_label("Max concurrent").fill("1")
    await bar.get_by_label("Priority").select_option("low")
    await bar.get_by_role("button", name="Start download of 3").click()
    await expect(page.locator("#batch-h")).to_be_focused()
    batch_id = await page.locator("#batch-id").text_content()
    steer = page.get_by_role("group", name="Steer this batch")
    await expect(steer.get_by_label("Priority")).to_have_value("low")
    await expect(page.locator("#files tr[data-status=downloading]")).to_have_count(
        1, timeout=SLOW)

    # Pause from the keyboard: the batch shows paused, its file keeps its bytes.
    toggle = steer.get_by_role("button", name="Pause batch")
    await toggle.focus()
    await page.keyboard.press("Enter")
    await expect(page.locator("#batch-state")).to_have_text("· paused", timeout=SLOW)
    await expect(page.locator("#notice")).to_contain_text("Batch paused")
    resume = steer.get_by_role("button", name="Resume batch")
    await expect(resume).to_be_enabled()
    await expect(resume).to_be_focused()  # the same button: focus stays on it
    await expect(page.locator("#files tr[data-status=paused]")).to_have_count(1)
    await stack.until_serving(0, within=2)  # the running file stopped

    # A new limit and priority while paused, announced in the notice.
    await steer.get_by_label("Max concurrent").select_option("3")
    await expect(page.locator("#notice")).to_contain_text("max_concurrent changed from 1 to 3")
    await steer.get_by_label("Priority").select_option("high")
    await expect(page.locator("#notice")).to_contain_text("priority changed from low to high")
    item = page.locator(f"#batches li[data-batch={batch_id}]")
    await expect(item).to_contain_text("high priority", timeout=SLOW)
    await page.locator("#batch").screenshot(path=out / "web-page-paused.png")

    await resume.click()
    await expect(page.locator("#notice")).to_contain_text("Batch resumed")
    await expect(page.locator("#files tr[data-status=completed]")).to_have_count(
        3, timeout=SLOW * 2)
    await expect(page.locator("#batch-state")).to_have_text("· completed")
    await expect(steer.get_by_role("button", name="Pause batch")).to_be_disabled()
    await expect(steer.get_by_label("Max concurrent")).to_have_value("3")
    status = await stack.status(batch_id)
    assert (status["priority"], status["max_concurrent"]) == ("high", 3)
    assert console_errors == []


@pytest.mark.stack(api_token="e2e-page-token")
async def test_with_a_token_the_page_asks_once_and_its_links_open_signed(stack: Stack, browser):
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    asked: list[str] = []

    async def answer(dialog) -> None:
        asked.append(dialog.message)
        await dialog.accept("e2e-page-token")
    page.on("dialog", answer)
    await page.goto(str(stack.http.base_url))
    rows = page.locator("#messages tr")
    await expect(rows.first).to_be_visible(timeout=SLOW)  # the list came, with the token
    assert len(asked) == 1 and "token" in asked[0]

    small = min((m for m in stack.sim_messages()
                 if m.media_kind == "photo" and not m.deleted and not m.forbidden),
                key=lambda m: m.size)
    await page.get_by_label("Text").fill(small.file_name)
    await page.get_by_role("button", name="Apply filters").click()
    await expect(page.locator(f"#messages tr[data-id='{small.message_id}']")).to_be_visible()
    await page.get_by_role("button", name="Select all matching").click()
    await page.get_by_role("button", name="Start download of").click()
    # the live view (an event stream, which takes the token in its query) shows it done
    await expect(page.locator("#files tr[data-status=completed]")).to_have_count(
        1, timeout=SLOW)
    link = page.locator("#files a")
    await expect(link).to_have_text(f"{small.message_id}_{small.telegram_message_id}_"
                                    f"{small.file_name}")
    href = await link.get_attribute("href")
    assert href and href.startswith("/media/") and "&sig=" in href
    fetched = await page.request.get(str(stack.http.base_url.join(href)))
    assert fetched.status == 200 and len(await fetched.body()) == small.size
    bare = await page.request.get(str(stack.http.base_url.join(href.split("?")[0])))
    assert bare.status == 401  # the file itself needs the token or the signature

    await page.reload()  # the token is kept for the session: not asked again
    await expect(rows.first).to_be_visible(timeout=SLOW)
    assert len(asked) == 1


async def test_messages_selected_by_their_telegram_links(stack: Stack, browser):
    page, console_errors = await watched_page(browser)
    await page.goto(str(stack.http.base_url))
    photos = sorted((m for m in stack.sim_messages() if m.media_kind == "photo"
                     and not m.deleted and not m.forbidden), key=lambda m: m.size)[:2]
    links = [f"https://t.me/{m.chat}/{m.telegram_message_id}" for m in photos]
    unknown = f"https://t.me/{photos[0].chat}/{10**9}"
    await page.get_by_text("Select by Telegram message links").click()
    await page.get_by_label("Message links").fill(f"{links[0]}\n{links[1]}  {unknown}\n")
    await page.get_by_role("button", name="Select linked messages").click()
    notice = page.locator("#notice")
    await expect(notice).to_contain_text("Selected 2 linked messages. Not selected: "
                                         f"{unknown}: chat '{photos[0].chat}' has no "
                                         f"message {10**9} with media")
    await expect(notice).to_contain_text("copy the message's link again")
    bar = page.get_by_role("region", name="Download the selected messages")
    await expect(bar.locator("#selected-count")).to_have_text("2 selected")
    await bar.get_by_role("button", name="Start download of 2").click()
    files = page.locator("#files tr")
    await expect(files).to_have_count(2)
    assert sorted(int(i) for i in await files.evaluate_all(
        "rs => rs.map(r => r.dataset.id)")) == sorted(m.message_id for m in photos)
    await expect(page.locator("#batch-state")).to_have_text("· completed", timeout=SLOW)
    assert console_errors == []


async def test_a_rule_made_on_the_page_may_start_the_messages_already_listed(
        stack: Stack, browser):
    page, console_errors = await watched_page(browser)
    await page.goto(str(stack.http.base_url))
    voice = [m.message_id for m in stack.sim_messages()
             if m.chat == "sim_demo" and m.media_kind == "voice"]
    assert voice
    await page.get_by_label("Watch chat").fill("sim_demo")
    await page.get_by_role("checkbox", name="watch voice").check()
    await page.get_by_label("also the messages already listed").check()
    await page.get_by_role("button", name="Watch", exact=True).click()
    await expect(page.locator("#notice")).to_contain_text(
        "its matching media already listed and its new ones download")
    rule_id = (await page.locator("#rules code").first.text_content() or "").strip()
    assert rule_id.startswith("rule_")

    async def every_voice_note_started() -> bool:
        items = (await stack.http.get("/api/media/batches", params={"limit": 100})).json()
        ids: list[int] = []
        for b in (b for b in items["items"] if b["rule_id"] == rule_id):
            ids += [f["message_id"] for f in (await stack.status(b["batch_id"]))["files"]]
        return sorted(ids) == sorted(voice)
    await until(every_voice_note_started, SLOW / 1000, what="the voice notes started")
    assert console_errors == []


@pytest.mark.stack(max_batch_ids=2)
async def test_download_all_matching_starts_as_many_batches_as_it_takes(stack: Stack, browser):
    page, console_errors = await watched_page(browser)
    asked: list[str] = []

    async def accept(dialog) -> None:
        asked.append(dialog.message)
        await dialog.accept()
    page.on("dialog", accept)
    await page.goto(str(stack.http.base_url))
    photos = sorted((m for m in stack.sim_messages() if m.media_kind == "photo"),
                    key=lambda m: m.size)
    limit = photos[4].size  # the five smallest photos (sizes differ)
    wanted = sorted(m.message_id for m in photos if m.size <= limit)
    assert len(wanted) == 5
    await page.get_by_role("checkbox", name="photo", exact=True).check()
    await page.get_by_label("Max size").fill(str(limit))
    await page.get_by_role("button", name="Apply filters").click()
    await page.get_by_role("button", name="Download all 5 matching").click()
    await expect(page.locator("#notice")).to_contain_text(
        "Started 5 downloads as 3 batches: batch_")
    assert asked == ["Start 5 downloads as 3 batches of at most 2?"]
    batches = (await stack.http.get("/api/media/batches")).json()["items"]
    assert sorted(b["total_files"] for b in batches) == [1, 2, 2]
    ids = [f["message_id"] for b in batches
           for f in (await stack.status(b["batch_id"]))["files"]]
    assert sorted(ids) == wanted
    await expect(page.locator("#batch-h")).to_be_focused()  # the first batch opened
    assert console_errors == []


async def test_a_cancelled_batch_is_tried_again_from_its_view(stack: Stack, browser):
    page, console_errors = await watched_page(browser)
    photo = min((m for m in stack.sim_messages()
                 if m.media_kind == "photo" and not m.deleted and not m.forbidden),
                key=lambda m: m.size)
    await sim_client.set_faults(stack.sim_url, slow={"message_id": photo.message_id,
                                                      "bandwidth": 1})  # held part-way
    started = await stack.http.post("/api/media/batch-download", json={
        "message_ids": [photo.message_id], "force": True})
    batch_id = started.json()["batch_id"]
    await page.goto(f"{stack.http.base_url}/#batch={batch_id}")
    retry = page.get_by_role("button", name="Retry failed and cancelled")
    await expect(page.locator("#batch-state")).to_have_text("· in progress")
    await expect(retry).to_be_hidden()  # only once it is over
    await page.get_by_role("button", name="Cancel batch").click()
    await expect(page.locator("#batch-state")).to_have_text("· cancelled", timeout=SLOW)
    await sim_client.clear_faults(stack.sim_url)
    await retry.click()
    await expect(page.locator("#batch-id")).not_to_have_text(batch_id)
    await expect(page.locator("#batch-state")).to_have_text("· completed", timeout=SLOW)
    await expect(page.locator(f"#files tr[data-id='{photo.message_id}']")).to_be_visible()
    assert console_errors == []
