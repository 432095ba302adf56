"""Logs that stay readable through an outage.

A server going away is expected: the connection libraries reconnect by themselves, and
`tgdl.bus.broker` says once when NATS goes and once when it is back. So a record whose
exception is an expected network error loses its traceback (its one-line reason stays),
and the same message repeated within a window is printed once, then counted; the next
time it is printed it says how many were held back.
"""

from __future__ import annotations

import logging
import time

# FastStream's own lines that `tgdl.bus.broker` says better (or that say nothing).
_DROPPED = ("Connection broken with", "Connection established", "callback for Task-")


# More exceptions a service declares to be an outage's expected consequence.
_ALSO_EXPECTED: list[type[BaseException]] = []


def expect(*kinds: type[BaseException]) -> None:
    """Treat `kinds` as expected outages too (e.g. a lost database session)."""
    _ALSO_EXPECTED.extend(k for k in kinds if k not in _ALSO_EXPECTED)


def _empty_fetch(exc: BaseException | None) -> bool:
    """A pull fetch that found nothing in time: nats-py (2.15 on) ends some of those with
    a plain TimeoutError rather than its own, which FastStream's consumer loop does not
    catch, so its supervisor restarts the consumer task at once. Nothing was lost."""
    if type(exc) is not TimeoutError:
        return False
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name == "_fetch_n" and code.co_filename.endswith("nats/js/client.py"):
            return True
        tb = tb.tb_next
    return False


def expected_outage(exc: BaseException | None) -> bool:
    """A network error a lost server causes; its traceback tells nothing new."""
    if exc is None:
        return False
    if isinstance(exc, tuple(_ALSO_EXPECTED)):
        return True
    import asyncpg
    import nats.errors
    import nats.js.errors

    # asyncpg's InternalClientError: seen when the server died in the middle of a query
    expected = (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
                asyncpg.InternalClientError,
                asyncpg.exceptions.OperatorInterventionError, nats.errors.ConnectionClosedError,
                nats.errors.ConnectionReconnectingError, nats.errors.UnexpectedEOF,
                nats.errors.StaleConnectionError, nats.errors.NoServersError,
                nats.errors.OutboundBufferLimitError, nats.errors.FlushTimeoutError,
                nats.errors.TimeoutError, nats.errors.NoRespondersError,
                nats.js.errors.ServiceUnavailableError,
                # a stream without a leader for a moment (a cluster electing one)
                nats.js.errors.NoStreamResponseError)
    return isinstance(exc, expected)


class QuietLogs(logging.Filter):
    """A handler filter: no traceback for expected outages, repeats within `window`
    seconds held back and counted (warnings and errors only; info lines are rare)."""

    def __init__(self, window: float = 30.0, clock=time.monotonic) -> None:
        super().__init__()
        self.window = window
        self._clock = clock
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}  # key: (since, held)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(("tgdl.faststream", "faststream")) and \
                str(record.msg).startswith(_DROPPED):
            return False
        exc = record.exc_info[1] if record.exc_info else None
        restarted = "raised an exception, retrying" in str(record.msg)
        if restarted and _empty_fetch(exc):
            return False  # not an outage, and the consumer runs again already
        if expected_outage(exc) and restarted:
            # FastStream's supervisor restarting a consumer task that met an outage
            record.msg, record.levelno, record.levelname = (
                "a consumer task met a lost connection and was restarted", logging.WARNING,
                "WARNING")
        if expected_outage(exc):
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            record.msg = f"{record.getMessage()} ({reason})"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, record.getMessage())
        now = self._clock()
        since, held = self._seen.get(key, (None, 0))
        if since is not None and now - since < self.window:
            self._seen[key] = (since, held + 1)
            return False
        if held:
            record.msg = f"{record.getMessage()} (and {held} more like it in the last " \
                         f"{now - since:.0f} s)"
            record.args = None
        self._seen[key] = (now, 0)
        if len(self._seen) > 1000:  # forget the oldest; a flood of unique lines is rare
            for old in list(self._seen)[:500]:
                del self._seen[old]
        return True
