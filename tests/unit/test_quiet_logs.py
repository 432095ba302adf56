"""The log filter every service installs: expected outages without tracebacks, repeats
held back and counted."""

from __future__ import annotations

import logging
import sys

from tgdl.runtime import setup_logging
from tgdl.runtime.quiet import QuietLogs


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def record(msg: str, level: int = logging.WARNING, exc: BaseException | None = None,
           name: str = "tgdl.test") -> logging.LogRecord:
    exc_info = None
    if exc is not None:
        try:
            raise exc
        except BaseException:
            exc_info = sys.exc_info()
    return logging.LogRecord(name, level, __file__, 1, msg, None, exc_info)


def test_an_expected_network_error_keeps_its_reason_but_not_its_traceback():
    r = record("fetch failed", exc=ConnectionRefusedError(111, "Connection refused"))
    assert QuietLogs().filter(r)
    assert r.exc_info is None
    assert r.getMessage() == "fetch failed (ConnectionRefusedError: [Errno 111] Connection refused)"


def test_an_unexpected_error_keeps_its_traceback():
    r = record("handler failed", logging.ERROR, exc=KeyError("x"))
    assert QuietLogs().filter(r)
    assert r.exc_info is not None


def test_repeats_within_the_window_are_held_back_and_counted():
    clock = Clock()
    quiet = QuietLogs(window=30, clock=clock)
    shown = []
    for second in range(0, 65, 5):
        clock.now = second
        r = record("cannot reach the database")
        if quiet.filter(r):
            shown.append(r.getMessage())
    assert shown == ["cannot reach the database",
                     "cannot reach the database (and 5 more like it in the last 30 s)",
                     "cannot reach the database (and 5 more like it in the last 30 s)"]


def test_different_messages_and_info_lines_pass():
    quiet = QuietLogs(window=30, clock=Clock())
    assert quiet.filter(record("a")) and quiet.filter(record("b"))
    assert quiet.filter(record("started", logging.INFO))
    assert quiet.filter(record("started", logging.INFO))


def test_faststreams_own_connection_lines_are_left_to_the_bus():
    quiet = QuietLogs()
    assert not quiet.filter(record("Connection broken with UnexpectedEOF()",
                                   name="tgdl.faststream"))
    assert not quiet.filter(record("callback for Task-17 is being executed...", logging.INFO,
                                   name="tgdl.faststream"))


def raised_in(function: str, filename: str, exc: BaseException) -> BaseException:
    """`exc` as raised inside a function of that name in a module at that path."""
    code = compile(f"def {function}(exc):\n    raise exc\n", filename, "exec")
    scope: dict = {}
    exec(code, scope)
    try:
        scope[function](exc)
    except BaseException as raised:
        return raised
    raise AssertionError("not raised")


def restarted(exc: BaseException) -> logging.LogRecord:
    return logging.LogRecord("tgdl.faststream", logging.ERROR, __file__, 1,
                             "Task-5 raised an exception, retrying...", None,
                             (type(exc), exc, exc.__traceback__))


def test_a_consumer_restarted_after_a_fetch_that_found_nothing_is_not_an_outage():
    # nats-py's pull fetch ending with a plain TimeoutError (FastStream restarts the task)
    fetch = "/venv/lib/python3.11/site-packages/nats/js/client.py"
    assert not QuietLogs().filter(restarted(raised_in("_fetch_n", fetch, TimeoutError())))
    # the same exception anywhere else, or a lost connection, is still said
    assert QuietLogs().filter(restarted(raised_in("request", fetch, TimeoutError())))
    lost = QuietLogs()
    record_ = restarted(raised_in("_fetch_n", fetch, ConnectionRefusedError(111, "refused")))
    assert lost.filter(record_)
    assert record_.getMessage().startswith("a consumer task met a lost connection")


def test_a_service_does_not_log_each_http_request_it_makes():
    root, httpx_log = logging.getLogger(), logging.getLogger("httpx")
    levels = root.level, httpx_log.level
    try:
        root.setLevel(logging.INFO)  # as a service runs (pytest's own setup says WARNING)
        setup_logging()
        assert root.isEnabledFor(logging.INFO)
        assert not httpx_log.isEnabledFor(logging.INFO)  # "HTTP Request: GET ..." each time
        assert httpx_log.isEnabledFor(logging.WARNING)
    finally:
        root.setLevel(levels[0])
        httpx_log.setLevel(levels[1])
