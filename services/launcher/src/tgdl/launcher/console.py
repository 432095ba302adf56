"""Output of `tgdl run`: every line prefixed with the name of the process that wrote it,
in colour on a terminal (rich) and plain text otherwise (logs, pipes, CI)."""

from __future__ import annotations

import sys
import zlib
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


class PrefixedOutput:
    """A `LineSink` writing to a stream; colour only when the stream is a terminal."""

    def __init__(self, stream: TextIO | None = None, colour: bool | None = None) -> None:
        self._stream = stream or sys.stdout
        use_colour = self._stream.isatty() if colour is None else colour
        self._rich = Console(file=self._stream, highlight=False, soft_wrap=True,
                             force_terminal=True) if use_colour else None

    def line(self, name: str, text: str) -> None:
        if self._rich is not None:
            self._rich.print(Text(prefix(name), style=colour_of(name)), Text(text), sep="")
        else:
            self._stream.write(prefix(name) + text + "\n")
            self._stream.flush()

    def say(self, text: str) -> None:
        """A line from the launcher itself."""
        self.line(SUPERVISOR_NAME, text)
