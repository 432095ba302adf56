"""The `tgdl` client commands as a user runs them: a subprocess talking HTTP to a running
stack (every service its own process), on a fixed-size terminal and without one."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from dataclasses import dataclass

import pytest
from e2e_stack import Stack

from tgdl.simtelegram import client as sim_client

pytestmark = pytest.mark.e2e

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
WIDTH = 100


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


def cli_env(stack: Stack, terminal: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("TTY_COMPATIBLE", "TTY_INTERACTIVE", "FORCE_COLOR", "NO_COLOR")}
    env.update(TGDL_URL=str(stack.http.base_url), PYTHONUNBUFFERED="1",
               COLUMNS=str(WIDTH), LINES="30")
    if terminal:  # rich renders as on a terminal of WIDTH columns, colours and cursor moves
        env.update(TTY_COMPATIBLE="1", TTY_INTERACTIVE="1")
    return env


async def spawn(stack: Stack, *args: str, terminal: bool = False):
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tgdl.launcher", *args, env=cli_env(stack, terminal),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=stack.workdir)


async def tgdl(stack: Stack, *args: str, terminal: bool = False, within: float = 90) -> Run:
    process = await spawn(stack, *args, terminal=terminal)
    async with asyncio.timeout(within):
        out, err = await process.communicate()
    return Run(process.returncode, out.decode(), err.decode())


def screen_lines(raw: str) -> list[str]:
    """What a terminal would have shown line by line (cursor moves and colours dropped)."""
    return [ANSI.sub("", part) for line in raw.split("\n") for part in line.split("\r")]


async def test_download_draws_bars_on_a_terminal_and_exits_0_when_all_completed(stack):
    ids = stack.media_ids(4, min_size=1_000_000)
    spec = [str(ids[0]), *map(str, ids[1:])]
    run = await tgdl(stack, "download", *spec, "--max-concurrent", "2", terminal=True)
    assert run.code == 0, run.out + run.err
    assert "\x1b[" in run.out  # drawn for a terminal
    lines = screen_lines(run.out)
    batch_id = re.search(r"(batch_\w+): Batch download started with 4 files", run.out)[1]
    # What is drawn fits the terminal; a file's line is printed whole (the terminal wraps
    # it), so its path can be copied
    drawn = [line for line in lines if not line.startswith("✓ #")]
    assert all(len(line) <= WIDTH for line in drawn), max(drawn, key=len)
    bars = [line for line in lines if line.startswith(batch_id) and "━" in line]
    assert bars and "4/4 files" in bars[-1] and "100%" in bars[-1]
    for m in ids:
        done = next(line for line in lines if line.startswith(f"✓ #{m} completed"))
        saved = done.split("  ")[-1]  # where the file is on disk
        assert saved.startswith(str(stack.media_root)) and os.path.isfile(saved), done
    assert f"{batch_id}: 4 of 4 files completed" in lines
    assert not run.err

    # The same batch afterwards: the status table, JSON, the batch list, a cancel too late.
    status = await tgdl(stack, "status", batch_id)
    assert status.code == 0 and "completed: 4 of 4 files completed" in status.out
    assert all(str(m) in status.out for m in ids) and "\x1b[" not in status.out
    body = (await tgdl(stack, "status", batch_id, "--json")).json()
    assert body == await stack.status(batch_id)
    watched = await tgdl(stack, "status", batch_id, "--watch")  # over already: one look
    assert watched.code == 0 and f"{batch_id}: 4 of 4 files completed" in watched.out
    listed = await tgdl(stack, "batches")
    assert listed.code == 0 and batch_id in listed.out and "100%" in listed.out
    [item] = (await tgdl(stack, "batches", "--json")).json()["items"]
    assert (item["batch_id"], item["progress"], item["completed"]) == (batch_id, 100, 4)
    late = await tgdl(stack, "cancel", batch_id)
    assert late.code == 0 and "already finished" in late.out


async def test_messages_are_a_table_filtered_by_the_server(stack):
    run = await tgdl(stack, "messages", "--type", "video,photo", "--min-size", "1MB",
                     "--limit", "200", "--json")
    assert run.code == 0, run.err
    page = run.json()
    expected = [m.message_id for m in stack.sim_messages()
                if m.media_kind in ("video", "photo") and m.size >= 1_000_000]
    assert [i["message_id"] for i in page["items"]] == expected and page["total"] == len(
        expected)
    table = await tgdl(stack, "messages", "--type", "video", "--search", "VID_", "--limit", "5")
    assert table.code == 0 and "matching messages" in table.out
    rows = [line for line in table.out.splitlines() if re.match(r"\s*\d+\s", line)]
    assert 0 < len(rows) <= 5 and all("video" in row for row in rows)

    bad = await tgdl(stack, "messages", "--since", "last week")
    assert bad.code == 2 and "since: 'last week' is not a date" in bad.err
    assert "suggestion:" in bad.err and "Traceback" not in bad.err
    unknown = await tgdl(stack, "status", "batch_nope")
    assert unknown.code == 2 and "batch_not_found" in unknown.err
    assert "suggestion: Use the batch_id" in unknown.err


async def test_without_a_terminal_lines_and_json_and_failures_with_suggestions(stack):
    gone = next(m.message_id for m in stack.sim_messages() if m.deleted)
    ok = stack.media_ids(2)
    run = await tgdl(stack, "download", *map(str, [*ok, gone]))
    assert run.code == 1, run.out + run.err  # not every file completed
    assert "\x1b[" not in run.out and "━" not in run.out
    assert all(f"✓ #{m} completed" in run.out for m in ok)
    failed = re.search(rf"✗ #{gone} failed: (\w+): .*\n\s+suggestion: \S", run.out)
    assert failed, run.out
    batch_id = re.search(r"(batch_\w+): Batch download started", run.out)[1]
    assert f"`tgdl retry {batch_id}` starts again those of them another try can mend" in (
        run.out)

    again = await tgdl(stack, "download", *map(str, ok), "--json")
    assert again.code == 0, again.err
    final = again.json()
    assert final["finished"] and final["completed"] == 2 == final["total_files"]
    assert all(f["already_downloaded"] for f in final["files"])


async def test_detach_prints_the_batch_id_alone_for_scripts_and_status_watch_follows_it(stack):
    ok, missing = stack.media_ids(2, min_size=1_000_000), 10**9
    run = await tgdl(stack, "download", "--detach", "--force", *map(str, [*ok, missing]))
    assert run.code == 0, run.out + run.err
    batch_id = run.out.strip()
    assert re.fullmatch(r"batch_\w+", batch_id) and run.out == batch_id + "\n"
    assert f"{batch_id}: Batch download started with 3 files" in run.err
    assert f"#{missing} not started: message_not_found" in run.err
    watched = await tgdl(stack, "status", batch_id, "--watch")
    assert watched.code == 1, watched.out + watched.err  # one of three could not start
    assert f"{batch_id}: 2 of 3 files completed, 1 failed" in watched.out

    nothing = await tgdl(stack, "download", "--detach", str(missing))
    assert nothing.code == 1 and re.fullmatch(r"batch_\w+\n", nothing.out)
    as_json = await tgdl(stack, "download", "--detach", "--json", str(ok[0]))
    assert as_json.code == 0, as_json.err
    assert as_json.json()["status"] == "completed"  # on disk already: nothing to wait for


async def test_download_takes_telegram_message_links_among_ids(stack):
    by_id = {m.message_id: m for m in stack.sim_messages()}
    first, second = stack.media_ids(2)
    m = by_id[first]
    link = f"https://t.me/{m.chat}/{m.telegram_message_id}"
    unknown = f"t.me/{m.chat}/{10**9}"
    run = await tgdl(stack, "download", "--force", link, str(second), unknown)
    assert run.code == 1, run.out + run.err  # one link named no message in the catalog
    assert re.search(r"Batch download started with 2 files", run.out), run.out
    assert f"✓ #{first} completed" in run.out and f"✓ #{second} completed" in run.out
    # Telegram was asked (the catalog service fetched the chat's messages): no such one
    assert (f"{unknown} not started: message_not_found: chat '{m.chat}' has no message "
            f"{10**9} with media") in run.out

    nothing = await tgdl(stack, "download", unknown, "https://t.me/c/12/x")
    assert nothing.code == 2, nothing.out + nothing.err
    assert "not_a_message_link: 'https://t.me/c/12/x': message id 'x' is not a number" in (
        nothing.out)
    assert "bad_links: none of the links names a message" in nothing.err


@pytest.mark.stack(max_batch_ids=2)
async def test_more_ids_than_a_batch_holds_start_as_several_batches_followed_in_turn(stack):
    ids = stack.media_ids(5)
    run = await tgdl(stack, "download", "--force", *map(str, ids))
    assert run.code == 0, run.out + run.err
    assert "5 messages are more than a batch holds: started as 3 batches" in run.out
    batches = re.findall(r"(batch_\w+): Batch download started with (\d) files?", run.out)
    assert [n for _, n in batches] == ["2", "2", "1"]
    for batch_id, n in batches:
        assert f"{batch_id}: {n} of {n} file{'s' if n != '1' else ''} completed" in run.out
    assert all(f"✓ #{m} completed" in run.out for m in ids)

    detached = await tgdl(stack, "download", "--detach", *map(str, ids))
    assert detached.code == 0 and len(detached.out.split()) == 3, detached.out
    as_json = await tgdl(stack, "download", "--json", *map(str, ids))
    assert as_json.code == 0, as_json.err
    assert [b["total_files"] for b in as_json.json()] == [2, 2, 1]


@pytest.mark.stack(max_batch_ids=2)
async def test_more_links_than_a_batch_holds_are_resolved_in_turn(stack):
    messages = [m for m in stack.sim_messages() if m.media_kind and m.chat == "sim_demo"][:3]
    links = [f"https://t.me/{m.chat}/{m.telegram_message_id}" for m in messages]
    run = await tgdl(stack, "download", "--detach", "--json", *links)
    assert run.code == 0, run.out + run.err
    assert [b["total_files"] for b in run.json()] == [2, 1]
    named = [m for b in run.json() for m in b["started_downloads"] + b["already_downloaded"]]
    assert named == [m.message_id for m in messages]


@pytest.mark.stack(max_batch_ids=100, max_body_bytes=1024)
async def test_a_start_too_big_for_one_request_body_is_sent_as_several(stack):
    # 301 ids of six digits are a body over 1 kB: refused (413) before the batch limit
    run = await tgdl(stack, "download", "--detach", "--json", "100000-100300")
    assert run.code == 1 and "too_large" not in run.out + run.err  # 1: none could start
    assert [b["total_files"] for b in run.json()] == [100, 100, 100, 1]
    assert {f["error"] for b in run.json() for f in b["failed_to_start"]} == {
        "message_not_found"}


async def test_download_takes_filters_as_tgdl_messages_reads_them(stack):
    voice = [m.message_id for m in stack.sim_messages()
             if m.chat == "sim_demo" and m.media_kind == "voice"]
    run = await tgdl(stack, "download", "--chat", "sim_demo", "--type", "voice",
                     "--detach", "--json")
    assert run.code == 0, run.out + run.err
    started = run.json()
    named = started["started_downloads"] + started["already_downloaded"] + [
        f["message_id"] for f in started["failed_to_start"]]
    assert sorted(named) == voice and started["total_files"] == len(voice)  # every match
    assert f"{len(voice)} messages with media match the filters" in run.err

    none = await tgdl(stack, "download", "--chat", "sim_demo", "--min-size", "1TB")
    assert none.code == 2 and "nothing_matches" in none.err, none.err
    bare = await tgdl(stack, "download")
    assert bare.code == 2 and "give at least one message id, a link, or filters" in bare.err


async def test_retry_starts_a_cancelled_batchs_files_again(stack):
    [m] = stack.media_ids(1)
    await sim_client.set_faults(stack.sim_url, slow={"message_id": m, "bandwidth": 1})
    first = (await tgdl(stack, "download", "--detach", "--force", str(m))).out.strip()
    cancelled = await tgdl(stack, "cancel", first)
    assert cancelled.code == 0 and "Batch cancelled, 1 downloads stopped" in cancelled.out
    await sim_client.clear_faults(stack.sim_url)
    run = await tgdl(stack, "retry", first)
    assert run.code == 0, run.out + run.err
    again = re.search(r"(batch_\w+): Batch download started with 1 file", run.out)[1]
    assert again != first and f"{again}: 1 of 1 file completed" in run.out
    nothing = await tgdl(stack, "retry", again)
    assert nothing.code == 2 and "nothing_to_retry" in nothing.err, nothing.err


async def read_until(stream: asyncio.StreamReader, pattern: str, within: float = 30) -> str:
    seen = ""
    async with asyncio.timeout(within):
        while not re.search(pattern, seen):
            line = await stream.readline()
            assert line, f"output ended before {pattern!r}: {seen}"
            seen += line.decode()
    return seen


async def interrupt(stack: Stack, answer: str, ids: list[int]) -> tuple[str, Run]:
    """Start a download, press Ctrl-C while files are in flight, answer the question."""
    process = await spawn(stack, "download", *map(str, ids), "--max-concurrent", "1")
    seen = await read_until(process.stdout, r"↓ #\d+ downloading")
    batch_id = re.search(r"(batch_\w+): ", seen)[1]
    process.send_signal(signal.SIGINT)
    async with asyncio.timeout(30):
        out, err = await process.communicate(answer.encode())
    return batch_id, Run(process.returncode, seen + out.decode(), err.decode())


async def test_ctrl_c_asks_whether_to_cancel_the_batch_or_leave_it_running(stack):
    ids = stack.media_ids(10, min_size=1_000_000)

    batch_id, run = await interrupt(stack, "n\n", ids[:5])
    assert run.code == 130 and f"Cancel batch {batch_id}? [y/N]" in run.err, run
    assert f"tgdl cancel {batch_id}" in run.out, run
    assert (await stack.status(batch_id))["overall_status"] != "cancelled"  # left running
    stopped = await tgdl(stack, "cancel", batch_id)
    assert stopped.code == 0 and "Batch" in stopped.out, stopped

    batch_id, run = await interrupt(stack, "y\n", ids[5:])
    assert run.code == 1 and "Batch cancelled" in run.out, run.out + run.err
    assert (await stack.until_finished(batch_id))["overall_status"] == "cancelled"


async def test_pause_set_and_resume_steer_a_running_batch(stack):
    ids = stack.media_ids(4, min_size=1_500_000)
    started = await stack.start_batch(ids, max_concurrent=1)
    batch_id = started["batch_id"]
    await stack.until_serving(1)

    paused = await tgdl(stack, "pause", batch_id)
    assert paused.code == 0 and "paused" in paused.out.lower(), paused.out + paused.err
    await stack.until_serving(0)
    status = (await stack.http.get(f"/api/media/batch-status/{batch_id}")).json()
    assert status["overall_status"] == "paused"

    changed = await tgdl(stack, "set", batch_id, "--max-concurrent", "3", "--json")
    assert changed.code == 0 and changed.json()["batch_id"] == batch_id
    raised = await tgdl(stack, "priority", batch_id, "high")
    assert raised.code == 0 and "priority changed from normal to high" in raised.out, raised
    resumed = await tgdl(stack, "resume", batch_id)
    assert resumed.code == 0, resumed.out + resumed.err
    final = await stack.until_finished(batch_id)
    assert final["overall_status"] == "completed" and final["max_concurrent"] == 3
    assert final["priority"] == "high"
    listed = await tgdl(stack, "batches")
    assert "high" in listed.out, listed.out

    low = await tgdl(stack, "download", str(stack.media_ids(5)[4]), "--priority", "low",
                     "--json")
    assert low.code == 0 and low.json()["priority"] == "low", low.out + low.err
    lower = await tgdl(stack, "set", low.json()["batch_id"], "--priority", "normal")
    assert lower.code == 0 and "already finished" in lower.out, lower.out + lower.err

    unknown = await tgdl(stack, "pause", "batch_nope")
    assert unknown.code == 2 and "batch_not_found" in unknown.err
    bad = await tgdl(stack, "set", batch_id, "--max-concurrent", "9")
    assert bad.code == 2 and "max_concurrent" in bad.err
