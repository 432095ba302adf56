"""A small process supervisor: start children, prefix their output, restart the ones that
die unexpectedly (with back-off), and stop them all gracefully.

Each child runs in its own session (process group): a Ctrl-C at the terminal reaches only
the launcher, which then stops the children in order, and signals sent to a child's group
also reach anything it spawned, so nothing is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tgdl.launcher.lifeline import die_with_parent

SUPERVISOR_NAME = "tgdl"
_LINE_LIMIT = 1 << 20  # longer lines are passed on in pieces
_DRAIN_TIMEOUT = 2.0  # seconds to read what a child wrote just before it exited


@dataclass(frozen=True)
class ChildSpec:
    name: str
    argv: Sequence[str]
    env: Mapping[str, str] | None = None  # the whole environment; None inherits ours
    cwd: Path | None = None


class LineSink(Protocol):
    def line(self, name: str, text: str) -> None:
        """One line of output from `name` (a child, or the supervisor itself)."""
        ...


@dataclass(frozen=True)
class Backoff:
    """Delay before restarting a child that died: doubling from `first` up to `limit`,
    starting over once a child has stayed up for `stable_after` seconds."""

    first: float = 0.5
    factor: float = 2.0
    limit: float = 30.0
    stable_after: float = 30.0

    def next(self, previous: float | None, uptime: float) -> float:
        if previous is None or uptime >= self.stable_after:
            return self.first
        return min(previous * self.factor, self.limit)


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)  # the child leads its own group: pgid == pid


@dataclass
class _Child:
    spec: ChildSpec
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    output: asyncio.StreamReader | None = None
    output_transport: asyncio.ReadTransport | None = None
    last_exit: int | None = None
    watcher: asyncio.Task[None] | None = None
    stopping: asyncio.Event = field(default_factory=asyncio.Event)


class Supervisor:
    def __init__(
        self, sink: LineSink, backoff: Backoff | None = None, stop_timeout: float = 10.0
    ) -> None:
        self._sink = sink
        self._backoff = backoff or Backoff()
        self._stop_timeout = stop_timeout
        self._children: dict[str, _Child] = {}
        self._closed = False  # stop() of everything: no more starts

    # --- queries ---------------------------------------------------------------------------
    def pid(self, name: str) -> int | None:
        child = self._children[name]
        process = child.process
        return process.pid if process and process.returncode is None else None

    def restarts(self, name: str) -> int:
        return self._children[name].restarts

    def last_exit(self, name: str) -> int | None:
        return self._children[name].last_exit

    def names(self) -> list[str]:
        return list(self._children)

    # --- life cycle ------------------------------------------------------------------------
    async def start(self, spec: ChildSpec) -> int:
        """Start a child and keep it running until `stop`; returns its first pid.
        Fails at once if it cannot be started at all (e.g. a missing executable)."""
        if spec.name in self._children:
            raise ValueError(f"a child named {spec.name!r} is already supervised")
        if self._closed:
            raise RuntimeError("the supervisor is stopping")
        child = _Child(spec)
        await self._spawn(child)
        self._children[spec.name] = child
        child.watcher = asyncio.create_task(self._watch(child), name=f"watch-{spec.name}")
        assert child.process is not None
        return child.process.pid

    async def stop(self, names: Iterable[str] | None = None) -> None:
        """SIGTERM the children (every one, or those named), SIGKILL the ones still
        running after the timeout, and return once they (and their output) are gone."""
        if names is None:
            self._closed = True
            chosen = list(self._children.values())
        else:
            chosen = [self._children[name] for name in names]
        for child in chosen:
            child.stopping.set()
            if child.process and child.process.returncode is None:
                _signal_group(child.process.pid, signal.SIGTERM)
        watchers = [c.watcher for c in chosen if c.watcher and not c.watcher.done()]
        if not watchers:
            return
        _, pending = await asyncio.wait(watchers, timeout=self._stop_timeout)
        if pending:
            stubborn = [c for c in chosen if c.watcher in pending]
            self._say(f"still running after {self._stop_timeout:g} s, killing: "
                      + ", ".join(c.spec.name for c in stubborn))
            self._kill(stubborn)
            await asyncio.wait(pending)

    def kill(self) -> None:
        """SIGKILL every child's process group right now (a second Ctrl-C)."""
        self._closed = True
        self._kill(self._children.values())

    def _kill(self, children: Iterable[_Child]) -> None:
        for child in children:
            child.stopping.set()
            if child.process and child.process.returncode is None:
                _signal_group(child.process.pid, signal.SIGKILL)

    # --- internals -------------------------------------------------------------------------
    async def _spawn(self, child: _Child) -> None:
        spec = child.spec
        # Our own pipe rather than asyncio's: on Python 3.11 `Process.wait()` also waits
        # for asyncio's pipes to close, which a leftover grandchild could delay forever.
        read_fd, write_fd = os.pipe()
        try:
            process = await asyncio.create_subprocess_exec(
                *spec.argv,
                env=dict(spec.env) if spec.env is not None else None,
                cwd=spec.cwd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=write_fd,
                stderr=write_fd,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        reader = asyncio.StreamReader(limit=_LINE_LIMIT)
        transport, _ = await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", buffering=0)
        )
        child.process, child.output, child.output_transport = process, reader, transport

    async def _until_exit(self, child: _Child) -> int:
        """Pass on the child's output until it exits; its exit code."""
        process, output = child.process, child.output
        assert process is not None and output is not None and child.output_transport
        pump = asyncio.create_task(self._pump(child.spec.name, output))
        returncode = await process.wait()
        # Whatever the child left in its group goes with it: no orphans.
        _signal_group(process.pid, signal.SIGKILL)
        _, unfinished = await asyncio.wait({pump}, timeout=_DRAIN_TIMEOUT)
        for task in unfinished:
            task.cancel()  # something outside the group still holds the pipe open
        child.output_transport.close()
        child.last_exit = returncode
        return returncode

    async def _watch(self, child: _Child) -> None:
        delay: float | None = None
        while True:
            started = time.monotonic()
            returncode = await self._until_exit(child)
            if child.stopping.is_set():
                graceful = returncode in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM
                how = "" if graceful else f" ({describe_exit(returncode)})"
                self._say(f"{child.spec.name} stopped{how}")
                return
            delay = self._backoff.next(delay, time.monotonic() - started)
            self._say(
                f"{child.spec.name} {describe_exit(returncode)} unexpectedly; "
                f"restarting in {delay:g} s"
            )
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(child.stopping.wait(), timeout=delay)
                if child.stopping.is_set():
                    return
                try:
                    await self._spawn(child)
                    break
                except OSError as exc:
                    delay = self._backoff.next(delay, 0.0)
                    self._say(f"{child.spec.name} could not be restarted ({exc}); "
                              f"trying again in {delay:g} s")
            child.restarts += 1
            assert child.process is not None
            self._say(f"{child.spec.name} restarted (pid {child.process.pid}, "
                      f"restart {child.restarts})")

    async def _pump(self, name: str, stream: asyncio.StreamReader) -> None:
        while True:
            try:
                raw = await stream.readuntil(b"\n")
            except asyncio.IncompleteReadError as end:
                raw = end.partial  # the last line had no newline (or there is none)
            except asyncio.LimitOverrunError as long_line:
                raw = await stream.read(long_line.consumed)  # pass it on in pieces
            if not raw:
                return
            # Keep reading whatever happens to our own output (a closed terminal, a
            # broken pipe): a child whose pipe fills up would hang.
            with contextlib.suppress(Exception):
                self._sink.line(name, raw.decode(errors="replace").rstrip("\r\n"))

    def _say(self, text: str) -> None:
        self._sink.line(SUPERVISOR_NAME, text)
