"""Where each service process spends its CPU on the per-file path: py-spy samples of the
running processes (only threads holding the GIL: Python at work, not waiting), summed by
the innermost frame of the project's own code and by the innermost frame of all (what the
CPU was literally doing)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tgdl.launcher.lifeline import die_with_parent

RATE = 100  # samples per second: enough for shares, light on two shared cores
_FRAME = re.compile(r"^(?P<fn>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def binary() -> str | None:
    """py-spy next to this Python or on PATH; it needs ptrace (root, or a kernel that lets
    a process trace its children)."""
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


@dataclass
class Recording:
    name: str
    process: subprocess.Popen
    out: Path


def start(name: str, pid: int, folder: Path) -> Recording:
    out = folder / f"{name}.spy"
    log = (folder / f"{name}.spy.log").open("wb")
    process = subprocess.Popen(
        [binary() or "py-spy", "record", "--pid", str(pid), "--format", "raw", "--rate",
         str(RATE), "--nonblocking", "--gil", "--full-filenames", "--output", str(out)],
        stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent())
    log.close()
    return Recording(name, process, out)


def stop(rec: Recording, timeout: float = 15.0) -> None:
    """SIGINT: py-spy writes what it sampled and exits."""
    if rec.process.poll() is None:
        rec.process.send_signal(signal.SIGINT)
    try:
        rec.process.wait(timeout)
    except subprocess.TimeoutExpired:
        rec.process.kill()
        rec.process.wait()


def _where(frame: str) -> tuple[str, str]:
    """(function, short file) of one py-spy frame `fn (path:line)`."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip(), ""
    path = m.group("file")
    marker = "/tgdl/"
    short = path[path.rfind(marker) + 1:] if marker in path else os.path.basename(path)
    return m.group("fn"), short


def summarise(path: Path, top: int = 6) -> dict:
    """Samples of one recording: total, and the leading innermost project frames and
    innermost frames, each as a share of all samples."""
    own: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    total = 0
    if not path.exists():
        return {"samples": 0, "project": [], "leaf": []}
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [_where(f) for f in stack.split(";")[1:]]  # the first is the thread
        if not frames:
            continue
        total += n
        fn, file = frames[-1]
        leaf[f"{file}:{fn}"] += n
        mine = [(f, p) for f, p in frames if p.startswith("tgdl/")]
        own[f"{mine[-1][1]}:{mine[-1][0]}" if mine else "(outside tgdl)"] += n

    def shares(c: Counter[str]) -> list[list]:
        return [[k, round(v / total, 3)] for k, v in c.most_common(top)] if total else []

    return {"samples": total, "project": shares(own), "leaf": shares(leaf)}
