"""The client commands' pure parts: ids and sizes as typed, the progress bars drawn to a
terminal of a fixed size, and the tables (fed by a stand-in for the API)."""

from __future__ import annotations

import argparse
import io
import json

import httpx
import pytest
from rich.console import Console

from tgdl.launcher.client import (
    UNLIMITED_WIDTH,
    Api,
    Failure,
    batches,
    bearer_token,
    console_for,
    message_ids,
    messages,
    resolve_links,
    size,
    start_batches,
    status_heading,
)
from tgdl.launcher.progress import LineView, batch_totals, human_size, human_time, render_batch

SNAPSHOT = {
    "batch_id": "batch_1f0c2a9e", "total_files": 4, "completed": 1, "downloading": 2,
    "failed": 0, "pending": 1, "overall_status": "in_progress", "finished": False,
    "summary": "1 of 4 files completed, 1 downloading, 1 paused by a Telegram rate limit, "
               "1 waiting for its turn",
    "files": [
        {"message_id": 12, "status": "completed", "progress": 100, "total_size": 2_000_000,
         "file_path": "media/photos/12_a.jpg", "download_url": "/media/photos/12_a.jpg"},
        {"message_id": 15, "status": "downloading", "progress": 40, "downloaded_size": 400_000,
         "total_size": 1_000_000, "download_speed": 1_200_000,
         "estimated_time_remaining": 1},
        {"message_id": 16, "status": "waiting", "progress": 10, "downloaded_size": 100_000,
         "total_size": 1_000_000, "download_speed": None, "estimated_time_remaining": None,
         "wait_seconds": 30},
        {"message_id": 31, "status": "pending", "progress": 0, "total_size": 1_000_000},
    ],
}


def draw(renderable, width: int) -> list[str]:
    out = io.StringIO()
    Console(file=out, force_terminal=True, color_system=None, width=width).print(renderable)
    return out.getvalue().splitlines()


@pytest.mark.parametrize("width", [50, 60, 80, 120])
def test_bars_fit_the_terminal_and_say_what_each_file_is_doing(width):
    lines = draw(render_batch(SNAPSHOT, elapsed=5.2), width)
    assert all(len(line) <= width for line in lines)
    batch, f15, f16, summary = lines
    assert batch.startswith("batch_1f0c2a9e") and "━" in batch
    assert "50%" in batch and "2.5 MB/5.0 MB" in batch
    assert f15.strip().startswith("#15") and "40%" in f15
    if width >= 60:
        assert "1.2 MB/s" in batch and "1.2 MB/s" in f15
    assert f16.strip().startswith("#16") and "10%" in f16
    if width >= 80:
        assert "1/4 files, ETA 3s" in batch and "ETA 1s" in f15
        assert "rate limit: 25s left" in f16  # counted down since the snapshot arrived
    assert summary.strip().startswith("1 of 4 files completed")


def test_a_finished_batch_is_full_and_has_no_file_bars():
    final = {**SNAPSHOT, "finished": True, "overall_status": "completed", "completed": 4,
             "files": [{**f, "status": "completed", "progress": 100}
                       for f in SNAPSHOT["files"]]}
    [batch, _summary] = draw(render_batch(final), 80)
    assert "100%" in batch and "4/4 files" in batch and "ETA" not in batch


def test_without_a_terminal_each_change_is_one_line():
    out = io.StringIO()
    view = LineView(Console(file=out, width=80))
    view.update(SNAPSHOT)
    view.update(SNAPSHOT)  # nothing changed: nothing printed
    failed = {"message_id": 31, "status": "failed", "error": "message_deleted",
              "detail": "the message was deleted", "suggestion": "Refresh the list."}
    view.update({**SNAPSHOT, "files": [*SNAPSHOT["files"][:3], failed]})
    assert out.getvalue().splitlines() == [
        "✓ #12 completed  2.0 MB  media/photos/12_a.jpg",  # where it is on disk
        "↓ #15 downloading  1.0 MB",
        "… #16 paused by a Telegram rate limit, resumes in 30s",
        "✗ #31 failed: message_deleted: the message was deleted",
        "    suggestion: Refresh the list.",
    ]
    assert batch_totals(SNAPSHOT) == (2_500_000, 5_000_000, 1_200_000)


def test_without_a_terminal_a_long_download_says_where_it_stands_every_ten_seconds():
    out = io.StringIO()
    clock = [0.0]
    view = LineView(Console(file=out, width=200), clock=lambda: clock[0])
    downloading = SNAPSHOT["files"][1]

    def at(t: float, **now) -> None:
        clock[0] = t
        view.update({**SNAPSHOT, "files": [{**downloading, **now}]})

    at(0.0)  # starts: its status line only
    at(9.5, progress=50, downloaded_size=500_000)
    at(10.0, progress=60, downloaded_size=600_000, estimated_time_remaining=75)
    at(15.0, progress=70, downloaded_size=700_000)
    at(20.5, progress=90, downloaded_size=900_000, download_speed=None,
       estimated_time_remaining=None)
    at(21.0, status="completed", progress=100, file_path="media/15.bin")
    at(40.0, status="completed", progress=100, file_path="media/15.bin")
    assert out.getvalue().splitlines() == [
        "↓ #15 downloading  1.0 MB",
        "↓ #15 60%  600 kB/1.0 MB  1.2 MB/s, 1m15s left",
        "↓ #15 90%  900 kB/1.0 MB",
        "✓ #15 completed  1.0 MB  media/15.bin",
    ]


def test_ids_and_ranges_as_typed():
    assert message_ids(["12", "15-18", "31", "16", "40,41"]) == [12, 15, 16, 17, 18, 31, 40, 41]
    # a link stays whole, in its place (the gateway resolves it), commas and all
    assert message_ids(["3", "https://t.me/chan/5?a=1,2", "t.me/chan/5?a=1,2", "4"]) == [
        3, "https://t.me/chan/5?a=1,2", "t.me/chan/5?a=1,2", 4]
    for bad in (["x"], ["0"], ["5-3"], ["1-20000"], [","]):
        with pytest.raises(argparse.ArgumentTypeError):
            message_ids(bad)


def test_sizes_as_typed():
    assert [size(s) for s in ("1234", "5MB", "5mb", "1.5GB", "800k", "1KiB", "2 MiB")] == [
        1234, 5_000_000, 5_000_000, 1_500_000_000, 800_000, 1024, 2 * 2**20]
    for bad in ("", "5XB", "-1", "MB"):
        with pytest.raises(argparse.ArgumentTypeError):
            size(bad)
    assert [human_size(n) for n in (None, 999, 1_500, 2_500_000)] == ["", "999 B", "1.5 kB",
                                                                       "2.5 MB"]
    assert [human_time(s) for s in (None, 0.2, 59, 61, 7322)] == ["", "1s", "59s", "1m01s",
                                                                  "2h02m"]


def test_without_a_terminal_a_pause_says_what_is_kept_and_how_to_go_on():
    out = io.StringIO()
    view = LineView(Console(file=out, width=200))
    running = {**SNAPSHOT, "files": SNAPSHOT["files"][1:2]}
    view.update(running)
    paused_file = {"message_id": 15, "status": "paused", "progress": 40,
                   "downloaded_size": 400_000, "total_size": 1_000_000}
    view.update({**running, "overall_status": "paused", "files": [paused_file],
                 "summary": "Paused: 0 of 1 file completed, 1 paused"})
    view.update(running)  # resumed
    assert out.getvalue().splitlines() == [
        "↓ #15 downloading  1.0 MB",
        "‖ batch_1f0c2a9e: Paused: 0 of 1 file completed, 1 paused; "
        "`tgdl resume batch_1f0c2a9e` goes on",
        "‖ #15 paused, 400 kB/1.0 MB kept for the resume",
        "▶ batch_1f0c2a9e: resumed",
        "↓ #15 downloading  1.0 MB",
    ]


def test_the_status_heading_says_the_status_once():
    body = {"batch_id": "b", "priority": "normal", "overall_status": "paused",
            "summary": "Paused: 1 of 4 files completed, 2 paused"}
    assert status_heading(body) == "b (normal priority): Paused: 1 of 4 files completed, 2 paused"
    body = {**body, "overall_status": "in_progress", "summary": "1 of 4 files completed"}
    assert status_heading(body) == "b (normal priority): in_progress: 1 of 4 files completed"


class CannedApi:
    """The API port answering every call with one body."""

    def __init__(self, body: dict) -> None:
        self.body = body

    def call(self, method: str, path: str, **_: object) -> dict:
        return self.body


def listing(width: int, handler, body: dict, **args) -> list[str]:
    out = io.StringIO()
    namespace = argparse.Namespace(json=False, limit=20, offset=0, **args)
    assert handler(CannedApi(body), Console(file=out, width=width), namespace) == 0
    return out.getvalue().splitlines()


BATCHES = {"total": 2, "offset": 0, "limit": 20, "items": [
    {"batch_id": "batch_1f0c2a9e", "kind": "batch", "rule_id": "rule_3fa2c1d0",
     "created_at": "2026-11-30T17:48:07Z", "overall_status": "in_progress",
     "priority": "high", "progress": 45, "completed": 2, "total_files": 10,
     "summary": "2 of 10 files completed, 3 downloading, 5 waiting for their turn"},
    {"batch_id": "single_77aa01bc", "kind": "single", "rule_id": None,
     "created_at": "2026-11-30T17:40:00Z", "overall_status": "completed",
     "priority": "normal", "progress": 100, "completed": 1, "total_files": 1,
     "summary": "1 of 1 file completed"},
]}


def column(lines: list[str], header: str, next_header: str) -> str:
    """A column's text, its wrapped pieces joined (a table without borders)."""
    start, end = lines[0].index(header), lines[0].index(next_header)
    return "".join(line[start:end].strip() for line in lines[1:])


def test_on_a_terminal_of_80_columns_the_batch_list_cuts_nothing():
    lines = listing(80, batches, BATCHES)
    assert all(len(line) <= 80 for line in lines)
    text = "\n".join(lines)
    for whole in ("batch_1f0c2a9e", "single_77aa01bc", "rule_3fa2c1d0", "2026-11-30 17:48",
                  "in_progress", "high priority", "45%", "2/10"):
        assert whole in text, (whole, text)
    assert "…" not in text and "normal priority" not in text
    summaries = "".join(line[lines[0].index("summary"):].strip() for line in lines[1:-1])
    assert summaries.replace(" ", "") == "".join(
        b["summary"] for b in BATCHES["items"]).replace(" ", "")
    assert lines[-1] == "1-2 of 2 batches"


def test_message_cells_wrap_rather_than_being_cut():
    name = "VID_20250106_141858_a_rather_long_name.mp4"
    page = {"total": 1, "offset": 0, "limit": 20, "items": [
        {"message_id": 123456, "chat": "sim_demo", "media_type": "video", "size": 27_350_019,
         "date": "2025-01-06T14:18:58Z", "download_state": "not_downloaded",
         "file_name": name, "caption": "a caption long enough to be wrapped in its column"}]}
    lines = listing(80, messages, page, all=False, chat=None, type=None, min_size=None,
                    max_size=None, since=None, until=None, search=None)
    assert all(len(line) <= 80 for line in lines)
    assert "…" not in "".join(lines)
    assert "123456" in lines[1] and "2025-01-06" in lines[1]
    assert column(lines[:-1], "file", "caption") == name
    assert column(lines[:-1], "state", "file").replace(" ", "") == "notdownloaded"


def test_output_that_is_not_a_terminal_is_as_wide_as_its_lines(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    assert console_for({}).width == UNLIMITED_WIDTH  # (pytest's output is no terminal)
    monkeypatch.setenv("COLUMNS", "80")
    assert console_for({"COLUMNS": "80"}).width == 80


class StartingApi:
    """The API port of a gateway that holds `limit` ids per batch and fails the start
    numbered `fail_at` (counting the refused one)."""

    def __init__(self, limit: int, fail_at: int | None = None) -> None:
        self.limit, self.fail_at, self.posts = limit, fail_at, []

    def call(self, method: str, path: str, json=None, params=None) -> dict:
        if method == "GET":
            return {"items": [], "total": 0, "batch_limit": self.limit}
        self.posts.append(json["message_ids"])
        if len(json["message_ids"]) > self.limit:
            raise Failure(2, "too_many_files", "too many", "Split them.")
        if len(self.posts) == self.fail_at:
            raise Failure(3, "unavailable", "the orchestrator is down")
        return {"batch_id": f"batch_{len(self.posts)}", "status": "started"}


def start_args() -> argparse.Namespace:
    return argparse.Namespace(max_concurrent=3, force=False, priority="normal",
                              name_template=None)


def test_more_ids_than_a_batch_holds_are_started_as_batches_of_the_limit_in_order():
    api, said = StartingApi(limit=2), io.StringIO()
    started = start_batches(api, Console(file=said), start_args(), [5, 6, 7, 8, 9])
    assert api.posts == [[5, 6, 7, 8, 9], [5, 6], [7, 8], [9]]
    assert [s["batch_id"] for s in started] == ["batch_2", "batch_3", "batch_4"]
    assert said.getvalue() == ""
    one = StartingApi(limit=50)
    assert len(start_batches(one, Console(file=said), start_args(), [5, 6])) == 1
    assert one.posts == [[5, 6]]


def test_a_start_failing_midway_says_which_batches_run_already():
    api, said = StartingApi(limit=2, fail_at=3), io.StringIO()
    with pytest.raises(Failure, match="orchestrator is down"):
        start_batches(api, Console(file=said), start_args(), [5, 6, 7, 8, 9])
    assert said.getvalue() == "Started before this failed: batch_2\n"


def test_a_link_to_an_album_brings_the_albums_messages_in_its_place():
    class Resolving:
        def call(self, method: str, path: str, params=None) -> dict:
            return {"items": [
                {"link": "t.me/c/1/5", "message_id": 8, "album": [7, 8, 9]},
                {"link": "t.me/c/1/6?single", "message_id": 8},
                {"link": "t.me/c/1/99", "error": "message_not_found", "detail": "gone",
                 "suggestion": "Check the link."}]}

    said = io.StringIO()
    ids, unresolved = resolve_links(Resolving(), Console(file=said, width=200), [
        3, "t.me/c/1/5", 4, "t.me/c/1/6?single", "t.me/c/1/99"])
    assert (ids, unresolved) == ([3, 7, 8, 9, 4], 1)
    assert "t.me/c/1/5: an album of 3 messages (add ?single" in said.getvalue()
    assert "t.me/c/1/99 not started: message_not_found: gone" in said.getvalue()


def test_the_cli_sends_the_first_plain_token_of_the_gateways_list():
    # TGDL_API_TOKEN as the gateway reads it: tokens, plain or as their digest
    assert bearer_token("sha256:" + "ab" * 32 + ", k7f ,q2x") == ("k7f", False)
    assert bearer_token("k7f") == ("k7f", False)
    assert bearer_token("") == (None, False) and bearer_token(None) == (None, False)
    assert bearer_token("sha256:" + "ab" * 32) == (None, True)


def test_a_refused_cli_with_only_digests_is_told_it_needs_a_token_itself():
    refused = httpx.Response(401, json={"error": "unauthorized", "detail": "no token",
                                        "suggestion": "Send Authorization: Bearer."})
    digests_only = Api("http://127.0.0.1:1", "sha256:" + "ab" * 32)
    try:
        told = digests_only._failure(refused)
    finally:
        digests_only.close()
    assert told.error == "unauthorized" and "only sha256: digests" in told.suggestion
    plain = Api("http://127.0.0.1:1", "k7f")
    try:
        assert plain._failure(refused).suggestion == "Send Authorization: Bearer."
        assert plain.http.headers["Authorization"] == "Bearer k7f"
    finally:
        plain.close()


def test_an_event_stream_ending_in_an_error_event_is_followed_by_polling():
    in_flight = {**SNAPSHOT}
    done = {**SNAPSHOT, "finished": True, "overall_status": "completed"}
    asked: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        if request.url.path.startswith("/api/media/batch-events/"):
            return httpx.Response(200, text=(
                f"data: {json.dumps(in_flight)}\n\n"
                'event: error\ndata: {"error": "database_unavailable", "detail": "x"}\n\n'),
                headers={"content-type": "text/event-stream"})
        return httpx.Response(200, json=done)

    api = Api("http://tgdl.test", None)
    api.http = httpx.Client(base_url=api.url, transport=httpx.MockTransport(answer))
    try:
        seen = list(api.snapshots("batch_1f0c2a9e", sleep=lambda _: None))
    finally:
        api.close()
    assert [s.get("overall_status") for s in seen] == ["in_progress", "completed"]
    assert asked == ["/api/media/batch-events/batch_1f0c2a9e",
                     "/api/media/batch-status/batch_1f0c2a9e"]
