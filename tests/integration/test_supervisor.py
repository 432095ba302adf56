"""The supervisor with tiny real child processes: prefixed output, restarts, graceful
stop, and nothing left running afterwards."""

from __future__ import annotations

import asyncio
import sys
import textwrap

import psutil
import pytest
from waiting import until

from tgdl.launcher.console import JsonOutput, PrefixedOutput
from tgdl.launcher.supervisor import SUPERVISOR_NAME, Backoff, ChildSpec, Supervisor

FAST = Backoff(first=0.05, factor=2, limit=0.2, stable_after=30)


class Lines:
    """A LineSink that remembers everything."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def line(self, name: str, text: str) -> None:
        self.seen.append((name, text))

    def of(self, name: str) -> list[str]:
        return [text for who, text in self.seen if who == name]


def python(code: str, name: str = "child") -> ChildSpec:
    return ChildSpec(name, [sys.executable, "-u", "-c", textwrap.dedent(code)])


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # exited, unreaped
    except psutil.NoSuchProcess:
        return True


GRACEFUL = """
    import signal, sys, time
    def bye(*_):
        print("cleaning up")
        sys.exit(0)
    signal.signal(signal.SIGTERM, bye)
    print("ready")
    while True:
        time.sleep(1)
"""

STUBBORN = """
    import signal, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("ready")
    while True:
        time.sleep(1)
"""

WITH_GRANDCHILD = """
    import subprocess, sys, time
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print(f"grandchild {grandchild.pid}")
    while True:
        time.sleep(1)
"""


async def test_output_lines_carry_the_name_of_their_child() -> None:
    lines = Lines()
    supervisor = Supervisor(lines, FAST, stop_timeout=5)
    await supervisor.start(python("print('hello'); print('second line', flush=True)"
                                  "; import sys; sys.stdout.write('no newline')", "greeter"))
    try:
        await until(lambda: "no newline" in lines.of("greeter"), what="the last line")
        assert lines.of("greeter")[:3] == ["hello", "second line", "no newline"]
        assert all(name in ("greeter", SUPERVISOR_NAME) for name, _ in lines.seen)
    finally:
        await supervisor.stop()


async def test_a_child_that_dies_is_restarted_and_reported() -> None:
    lines = Lines()
    supervisor = Supervisor(lines, FAST, stop_timeout=5)
    first_pid = await supervisor.start(python("import os; print(os.getpid()); raise SystemExit(3)",
                                              "crasher"))
    try:
        await until(lambda: supervisor.restarts("crasher") >= 2, what="two restarts")
        pids = {int(text) for text in lines.of("crasher")}
        assert first_pid in pids and len(pids) >= 2  # new processes, not the same one
        reports = lines.of(SUPERVISOR_NAME)
        assert any("crasher exited with code 3 unexpectedly; restarting" in r for r in reports)
        assert any("crasher restarted" in r for r in reports)
    finally:
        await supervisor.stop()


async def test_a_healthy_child_is_not_restarted() -> None:
    lines = Lines()
    supervisor = Supervisor(lines, FAST, stop_timeout=5)
    pid = await supervisor.start(python(GRACEFUL, "steady"))
    try:
        await until(lambda: "ready" in lines.of("steady"), what="ready")
        assert supervisor.pid("steady") == pid
        assert supervisor.restarts("steady") == 0
    finally:
        await supervisor.stop()


async def test_stop_lets_children_finish_on_sigterm() -> None:
    lines = Lines()
    supervisor = Supervisor(lines, FAST, stop_timeout=10)
    pids = [await supervisor.start(python(GRACEFUL, f"worker-{i}")) for i in (1, 2)]
    await until(lambda: all("ready" in lines.of(f"worker-{i}") for i in (1, 2)), what="ready")

    await supervisor.stop()

    for i, pid in enumerate(pids, start=1):
        assert "cleaning up" in lines.of(f"worker-{i}")  # ran its SIGTERM handler
        assert supervisor.last_exit(f"worker-{i}") == 0  # ... and was not killed
        assert gone(pid)
    assert supervisor.restarts("worker-1") == 0  # a requested stop is no crash


async def test_stopping_some_children_leaves_the_others_running() -> None:
    lines = Lines()
    supervisor = Supervisor(lines, FAST, stop_timeout=10)
    await supervisor.start(python(GRACEFUL, "service"))
    server = await supervisor.start(python(GRACEFUL, "server"))
    await until(lambda: all("ready" in lines.of(n) for n in ("service", "server")), what="ready")
    try:
        await supervisor.stop(["service"])

        assert supervisor.pid("service") is None and supervisor.last_exit("service") == 0
        assert supervisor.pid("server") == server
    finally:
        await supervisor.stop()
    assert supervisor.last_exit("server") == 0


async def test_stop_kills_a_child_that_ignores_sigterm_after_the_timeout() -> None:
    lines = Lines()
    supervisor = Supervisor(lines, FAST, stop_timeout=0.5)
    pid = await supervisor.start(python(STUBBORN, "stubborn"))
    await until(lambda: "ready" in lines.of("stubborn"), what="ready")

    await supervisor.stop()

    assert supervisor.last_exit("stubborn") == -9
    assert gone(pid)
    assert any("killing: stubborn" in r for r in lines.of(SUPERVISOR_NAME))


async def test_stop_leaves_no_process_behind() -> None:
    lines = Lines()
    supervisor = Supervisor(lines, FAST, stop_timeout=5)
    child = await supervisor.start(python(WITH_GRANDCHILD, "parent"))
    text = await until(lambda: [t for t in lines.of("parent") if t.startswith("grandchild")],
                       what="the grandchild's pid")
    grandchild = int(text[0].split()[1])
    assert not gone(grandchild)

    await supervisor.stop()

    assert gone(child)
    await until(lambda: gone(grandchild), what="the grandchild gone")


async def test_a_crashed_childs_leftovers_are_cleaned_up_before_the_restart() -> None:
    lines = Lines()
    supervisor = Supervisor(lines, Backoff(first=5), stop_timeout=5)
    await supervisor.start(python("""
        import subprocess, sys
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        print(f"grandchild {grandchild.pid}")
        raise SystemExit(1)
    """, "leaky"))
    try:
        text = await until(lambda: [t for t in lines.of("leaky") if t.startswith("grandchild")],
                           what="the grandchild's pid")
        grandchild = int(text[0].split()[1])
        await until(lambda: gone(grandchild), what="the grandchild gone")
    finally:
        await supervisor.stop()


async def test_a_missing_executable_fails_at_start() -> None:
    supervisor = Supervisor(Lines(), FAST)
    with pytest.raises(OSError):
        await supervisor.start(ChildSpec("nothing", ["/nonexistent/tgdl-service"]))
    await supervisor.stop()


def test_plain_output_is_prefixed_text() -> None:
    import io

    stream = io.StringIO()
    out = PrefixedOutput(stream, colour=False)
    out.line("downloader-1", "ready")
    out.say("gateway restarted")
    assert stream.getvalue() == (
        "downloader-1  | ready\n"
        "tgdl          | gateway restarted\n"
    )


def test_json_output_passes_json_lines_and_wraps_the_rest() -> None:
    import io
    import json

    stream = io.StringIO()
    out = JsonOutput(stream)
    out.line("gateway", '{"service": "gateway", "message": "ready"}')
    out.line("downloader-1", "Traceback (most recent call last):")
    out.say("gateway restarted")
    lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert lines[0] == {"service": "gateway", "message": "ready"}
    assert [(x["service"], x["message"]) for x in lines[1:]] == [
        ("downloader-1", "Traceback (most recent call last):"),
        ("tgdl", "gateway restarted")]


@pytest.mark.parametrize("make", [lambda s: PrefixedOutput(s, colour=False),
                                  lambda s: PrefixedOutput(s, colour=True), JsonOutput],
                         ids=["plain", "colour", "json"])
def test_output_whose_reader_went_away_is_dropped_without_an_error(make) -> None:
    import os

    read, write = os.pipe()
    os.close(read)  # e.g. `tgdl run | head`, once head has its lines
    with os.fdopen(write, "w") as stream:
        out = make(stream)
        out.say("Stopping")  # a BrokenPipeError inside, not out of it
        out.line("gateway", "still supervised")
        assert out.gone
    # leaving the block flushed and closed the stream: its descriptor is /dev/null now


LAUNCHER = """
    import asyncio, sys
    from tgdl.launcher.supervisor import ChildSpec, Supervisor

    class Out:
        def line(self, name, text):
            print(name, text, flush=True)

    async def main():
        supervisor = Supervisor(Out())
        sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
        pid = await supervisor.start(ChildSpec("sleeper", sleeper))
        print("child", pid, flush=True)
        await asyncio.sleep(600)

    asyncio.run(main())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
async def test_children_die_with_a_launcher_that_is_killed_outright() -> None:
    launcher = await asyncio.create_subprocess_exec(
        sys.executable, "-u", "-c", textwrap.dedent(LAUNCHER), stdout=asyncio.subprocess.PIPE
    )
    assert launcher.stdout is not None
    line = await asyncio.wait_for(launcher.stdout.readline(), 10)
    child = int(line.split()[1])
    assert not gone(child)

    try:
        launcher.kill()  # SIGKILL: no chance to stop anything itself
        await launcher.wait()

        await until(lambda: gone(child), what="the child gone with its launcher")
    finally:
        if not gone(child):
            psutil.Process(child).kill()
