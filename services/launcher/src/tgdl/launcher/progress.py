"""How `tgdl download` and `tgdl status --watch` show a batch: rich progress bars on a
terminal (`LiveView`), plain lines elsewhere (`LineView`): one per change, and a running
file's progress now and then.

Both are fed the batch-status snapshots of the event stream. Speeds and times left are the
server's (the downloaders measure them); only a rate-limit wait is counted down here
between snapshots, so it moves on screen while nothing else changes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

Snapshot = dict[str, Any]
IN_FLIGHT = ("downloading", "waiting")
TERMINAL = ("completed", "failed", "cancelled")


def human_size(n: int | float | None) -> str:
    """Decimal units, as disks and `--min-size 5MB` count them."""
    if n is None:
        return ""
    n = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            whole = unit == "B" or (unit == "kB" and n >= 10)  # "400 kB/1.0 MB" stays short
            return f"{n:.0f} {unit}" if whole else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def human_time(seconds: int | float | None) -> str:
    if seconds is None:
        return ""
    s = max(0, math.ceil(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def batch_totals(snapshot: Snapshot) -> tuple[int, int | None, int]:
    """Bytes done, bytes in all (None while a size is unknown), bytes/s of the batch."""
    files = snapshot.get("files", [])
    done = speed = 0
    total: int | None = 0
    for f in files:
        if f["status"] == "completed":
            done += f.get("total_size") or 0
        elif f["status"] in IN_FLIGHT:
            done += f.get("downloaded_size") or 0
            if f["status"] == "downloading":
                speed += f.get("download_speed") or 0
        if f.get("total_size") is None:
            total = None
        elif total is not None:
            total += f["total_size"]
    return done, total, speed


def saved_at(f: dict[str, Any]) -> str:
    """Where a completed file is: its path on the machine that downloaded it (what a
    terminal user opens), else the gateway's URL path for it."""
    return f.get("file_path") or f.get("download_url") or ""


def file_line(f: dict[str, Any]) -> str | None:
    """What a file's arrival at a new status says, in one line (None: nothing to say)."""
    m, status = f["message_id"], f["status"]
    if status == "completed":
        where = saved_at(f)
        kept = (f" (the same file as #{f['same_file_as']}, linked)" if f.get("same_file_as")
                else " (already there)" if f.get("already_downloaded") else "")
        return f"✓ #{m} completed{kept}  {human_size(f.get('total_size'))}  {where}".rstrip()
    if status in ("failed", "cancelled"):
        line = f"✗ #{m} {status}"
        if f.get("error"):
            line += f": {f['error']}: {f.get('detail') or ''}".rstrip()
        if f.get("suggestion"):
            line += f"\n    suggestion: {f['suggestion']}"
        return line
    if status == "waiting":
        wait = f.get("wait_seconds")
        return f"… #{m} paused by a Telegram rate limit" + (
            f", resumes in {human_time(wait)}" if wait is not None else "")
    if status == "downloading":
        return f"↓ #{m} downloading  {human_size(f.get('total_size'))}".rstrip()
    if status == "paused":
        return (f"‖ #{m} paused, {_amount(f.get('downloaded_size') or 0, f.get('total_size'))}"
                " kept for the resume")
    return None


def batch_line(snapshot: Snapshot, before: str | None) -> str | None:
    """What the batch's move to its overall status says (None: nothing to say): a pause
    and what continues it, and the resume."""
    batch, now = snapshot["batch_id"], snapshot.get("overall_status")
    if now == "paused":
        return f"‖ {batch}: {snapshot.get('summary', 'paused')}; `tgdl resume {batch}` goes on"
    if before == "paused" and now == "in_progress":
        return f"▶ {batch}: resumed"
    return None


class View:
    """Shows snapshots of one batch: `with view: view.update(s)...`, then `finish`."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.shown: dict[int, str] = {}  # message id -> the status last reported
        self.overall: str | None = None  # the batch's overall status last seen

    def __enter__(self) -> View:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def _changes(self, snapshot: Snapshot) -> list[str]:
        lines = []
        overall = snapshot.get("overall_status")
        if overall != self.overall:
            line = batch_line(snapshot, self.overall)
            self.overall = overall
            if line:
                lines.append(line)
        for f in snapshot.get("files", []):
            if self.shown.get(f["message_id"]) != f["status"]:
                self.shown[f["message_id"]] = f["status"]
                line = file_line(f)
                if line:
                    lines.append(line)
        return lines

    def update(self, snapshot: Snapshot) -> None:
        raise NotImplementedError

    def finish(self, final: Snapshot) -> None:
        style = "green" if final.get("overall_status") == "completed" else "red"
        self.console.print(Text(f"{final['batch_id']}: {final.get('summary', '')}",
                                style=f"bold {style}"))


def progress_line(f: dict[str, Any]) -> str:
    """Where a download stands, in one line."""
    line = (f"↓ #{f['message_id']} {f.get('progress') or 0:.0f}%  "
            f"{_amount(f.get('downloaded_size') or 0, f.get('total_size'))}")
    if f.get("download_speed"):
        line += f"  {human_size(f['download_speed'])}/s"
    if f.get("estimated_time_remaining") is not None:
        line += f", {human_time(f['estimated_time_remaining'])} left"
    return line


class LineView(View):
    """Not a terminal (a log, a pipe): one line per file that changes status, and a line
    of its progress every `every` seconds while a file downloads, so a long download
    shows it moves without a line per byte."""

    def __init__(self, console: Console, clock: Callable[[], float] = time.monotonic,
                 every: float = 10.0) -> None:
        super().__init__(console)
        self.clock = clock
        self.every = every
        self._told: dict[int, float] = {}  # message id -> when its last line was printed

    def update(self, snapshot: Snapshot) -> None:
        lines = self._changes(snapshot)
        now = self.clock()
        for f in snapshot.get("files", []):
            m = f["message_id"]
            if f["status"] != "downloading":
                self._told.pop(m, None)
            elif now - self._told.setdefault(m, now) >= self.every:
                self._told[m] = now
                lines.append(progress_line(f))
        for line in lines:
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)


class LiveView(View):
    """A terminal: a bar for the batch and one per file in flight, redrawn in place;
    files that end are printed above the bars as they end."""

    def __init__(self, console: Console, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(console)
        self.clock = clock
        self.snapshot: Snapshot | None = None
        self.received = clock()
        self.live = Live(console=console, get_renderable=self.render, refresh_per_second=4,
                         transient=False, redirect_stdout=False, redirect_stderr=False)

    def __enter__(self) -> LiveView:
        self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.stop()

    def update(self, snapshot: Snapshot) -> None:
        for line in self._changes(snapshot):
            if not line.startswith(("↓", "…")):  # in-flight files have their bar instead
                self.console.print(line, markup=False, highlight=False, soft_wrap=True)
        self.snapshot, self.received = snapshot, self.clock()
        self.live.refresh()

    def render(self) -> RenderableType:
        if self.snapshot is None:
            return Text("waiting for the batch's status…", style="dim")
        return render_batch(self.snapshot, self.clock() - self.received)


Row = tuple[str, str, float, int | None, int | None, int | None, str]
# Columns after the bar: (name, width), dropped from the right on a narrow terminal.
_AFTER_BAR = (("pct", 4), ("bytes", 13), ("speed", 9), ("note", 26))
MIN_BAR = 10


def _amount(done: int | None, total: int | None) -> str:
    return f"{human_size(done)}/{human_size(total)}" if total is not None else human_size(done)


class Bars:
    """Rows of label, bar, percent, bytes, speed and note, laid out for the width at hand:
    the bar takes what is left, and the rightmost columns go when it would get too thin."""

    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        label_width = max(len(r[0]) for r in self.rows)
        after = dict(_AFTER_BAR)
        # What the bar and the note share; the note narrows to 12, then the rightmost
        # columns go, before the bar gets thinner than MIN_BAR.
        while True:
            room = width - label_width - 1 - sum(w + 1 for n, w in after.items() if n != "note")
            if "note" in after and room - 1 - MIN_BAR >= 12:
                after["note"] = min(_AFTER_BAR[-1][1], room - 1 - MIN_BAR)
                room -= after["note"] + 1
                break
            after.pop("note", None)
            if room >= MIN_BAR or len(after) == 1:
                break
            after.popitem()
        bar_width = max(1, room)
        table = Table.grid(padding=(0, 1))
        table.add_column(width=label_width, no_wrap=True, overflow="ellipsis")
        table.add_column(width=bar_width)
        for name, w in after.items():
            table.add_column(width=w, no_wrap=True, overflow="ellipsis",
                             justify="left" if name == "note" else "right")
        for label, style, percent, done, total, speed, note in self.rows:
            cells = {"pct": f"{percent:.0f}%", "bytes": _amount(done, total),
                     "speed": f"{human_size(speed)}/s" if speed else "",
                     "note": Text(note, style="dim")}
            table.add_row(Text(label, style=style),
                          ProgressBar(total=100, completed=percent, width=bar_width),
                          *(cells[name] for name in after))
        yield table


def render_batch(snapshot: Snapshot, elapsed: float = 0.0) -> RenderableType:
    """The batch bar, its summary, and a bar per file downloading or waiting; `elapsed`
    is how long ago the snapshot arrived (rate-limit waits count down by it)."""
    done, total, speed = batch_totals(snapshot)
    files_total = snapshot.get("total_files") or 0
    if snapshot.get("finished") and snapshot.get("overall_status") == "completed":
        percent = 100.0
    elif total:
        percent = min(100.0, 100 * done / total)
    else:
        percent = 100 * snapshot.get("completed", 0) / files_total if files_total else 0.0
    eta = (total - done) / speed if total is not None and speed else None
    note = f"{snapshot.get('completed', 0)}/{files_total} files"
    if eta is not None and not snapshot.get("finished"):
        note += f", ETA {human_time(eta)}"
    rows: list[Row] = [(snapshot["batch_id"], "bold", percent, done, total, speed, note)]

    for f in snapshot.get("files", []):
        if f["status"] not in IN_FLIGHT:
            continue
        label = f"  #{f['message_id']}"
        if f["status"] == "waiting":
            left = (f.get("wait_seconds") or 0) - elapsed
            why = f"rate limit: {human_time(left)} left" if left > 0 else \
                "rate limit: resuming"
            rows.append((label, "yellow", f.get("progress") or 0, f.get("downloaded_size"),
                         f.get("total_size"), None, why))
        else:
            eta_f = f.get("estimated_time_remaining")
            rows.append((label, "", f.get("progress") or 0, f.get("downloaded_size") or 0,
                         f.get("total_size"), f.get("download_speed"),
                         f"ETA {human_time(eta_f)}" if eta_f is not None else ""))
    summary = Text(f"  {snapshot.get('summary', '')}", style="dim", no_wrap=True,
                   overflow="ellipsis")
    return Group(Bars(rows), summary)
