"""Output of `tgdl run`: every line prefixed with the name of the process that wrote it,
in colour on a terminal (rich) and plain text otherwise (logs, pipes, CI); with
`TGDL_LOG_FORMAT=json`, one JSON object per line instead, for log collectors."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TextIO

from rich.console import Console
from rich.text import Text

from tgdl.launcher.supervisor import SUPERVISOR_NAME

PREFIX_WIDTH = 14  # "downloader-10" fits
_PALETTE = ("cyan", "green", "magenta", "blue", "yellow", "bright_cyan", "bright_green",
            "bright_magenta", "bright_blue")


def prefix(name: str) -> str:
    return f"{name:<{PREFIX_WIDTH}}| "


def colour_of(name: str) -> str:
    if name == SUPERVISOR_NAME:
        return "bold red"
    return _PALETTE[zlib.crc32(name.encode()) % len(_PALETTE)]  # stable across runs


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """Rich would exit the process here: the sink below drops the lines instead."""
        self.quiet = True
        raise BrokenPipeError


class _Sink:
    """Writes that outlast their stream. Once it is gone (a closed pipe, a vanished
    terminal, a full disk) lines are dropped and the stream's descriptor points at
    /dev/null: `tgdl run` keeps supervising, still stops on a signal (its "Stopping"
    line raised before), and keeps reading its children's output, so none of them
    blocks on a full pipe."""

    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream or sys.stdout
        self.gone = False

    def _write(self, write: Callable[[], object]) -> None:
        if self.gone:
            return
        try:
            write()
        except OSError:  # BrokenPipeError, EIO, ENOSPC, ...
            self.gone = True
            with contextlib.suppress(OSError, ValueError):  # no descriptor: nothing to do
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, self._stream.fileno())  # so the exit's flush succeeds
                os.close(devnull)

    def _plain(self, text: str) -> None:
        self._stream.write(text)
        self._stream.flush()

    def line(self, name: str, text: str) -> None:
        raise NotImplementedError

    def say(self, text: str) -> None:
        """A line from the launcher itself."""
        self.line(SUPERVISOR_NAME, text)


class PrefixedOutput(_Sink):
    """A `LineSink` writing to a stream; colour only when the stream is a terminal."""

    def __init__(self, stream: TextIO | None = None, colour: bool | None = None) -> None:
        super().__init__(stream)
        use_colour = self._stream.isatty() if colour is None else colour
        self._rich = _Console(file=self._stream, highlight=False, soft_wrap=True,
                              force_terminal=True) if use_colour else None

    def line(self, name: str, text: str) -> None:
        rich = self._rich
        if rich is not None:
            self._write(lambda: rich.print(Text(prefix(name), style=colour_of(name)),
                                           Text(text), sep=""))
        else:
            self._write(lambda: self._plain(prefix(name) + text + "\n"))


class JsonOutput(_Sink):
    """A `LineSink` for `TGDL_LOG_FORMAT=json`: the services' lines are JSON objects
    already and pass through as they are (they name their service); anything else (the
    launcher's own lines, a child's stray output such as a traceback) becomes one, with
    the writing process as its service, so every line stays one JSON object."""

    def line(self, name: str, text: str) -> None:
        if not _is_json_object(text):
            text = json.dumps({
                "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace(
                    "+00:00", "Z"),
                "level": "info", "service": name, "logger": "output", "message": text,
            }, ensure_ascii=False)
        self._write(lambda: self._plain(text + "\n"))


def _is_json_object(text: str) -> bool:
    if not text.startswith("{"):
        return False
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


Output = PrefixedOutput | JsonOutput


def output_for(env: dict[str, str] | None = None) -> Output:
    """What `tgdl run` writes its children's output with."""
    from tgdl.runtime.jsonlog import json_logs

    return JsonOutput() if json_logs(env) else PrefixedOutput()
