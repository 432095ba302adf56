"""How every service connects to NATS: one set of options, a seed list of servers, and
one place that says when the connection goes and comes back.

`TGDL_NATS_URL` may name several servers of a cluster, comma-separated
(``nats://a:4222,nats://b:4222``); the client connects to any of them and fails over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Annotated, Any

import nats
import nats.errors
from faststream import Context
from faststream._internal.endpoint.subscriber.supervisor import TaskCallbackSupervisor
from faststream.nats import NatsBroker
from faststream.nats.message import NatsMessage as _NatsMessage
from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext

RECONNECT_WAIT = 0.5  # seconds between reconnect attempts (forever: services outlive outages)

log = logging.getLogger("tgdl.nats")


def servers(url: str) -> list[str]:
    """The seed servers named by a NATS URL setting (one URL, or several comma-separated)."""
    found = [part.strip() for part in url.split(",") if part.strip()]
    if not found:
        raise ValueError("no NATS server given")
    return found


_PullSubscription = JetStreamContext.PullSubscription
_fetch = _PullSubscription.fetch


async def _fetch_once_connected(self: Any, *args: Any, **kwargs: Any) -> list:
    """nats-py's pull `fetch`, sent once the client is connected. A fetch sent while it
    reconnects waits in the client's reconnect buffer (a pull consumer sends one per
    fetch timeout, for as long as the server is away); once that buffer is full every
    fetch fails at once, and FastStream restarts a pull consumer's task at once: a core
    busy, and memory growing, for as long as the outage lasts. Waiting for the
    connection costs nothing and asks for nothing stale."""
    while self._nc.is_reconnecting:  # noqa: ASYNC110 (nats-py has no event for its return)
        await asyncio.sleep(RECONNECT_WAIT / 5)
    return await _fetch(self, *args, **kwargs)


_PullSubscription.fetch = _fetch_once_connected  # every pull consumer of the process


# A consumer task that fails at once again and again is restarted after these delays in
# turn (the last one from then on: a fault that clears is seen within 2 s, at the cost of
# a restart every 2 s while it lasts); one that ran for HEALTHY_RUN seconds starts over.
RESTART_DELAYS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0)
HEALTHY_RUN = 10.0

_supervise = TaskCallbackSupervisor.__call__
# id of a subscriber -> (its failures in a row, when its current task started); an entry
# per subscriber that ever failed (subscribers are slotted: no weak references)
_failures: dict[int, tuple[int, float]] = {}


def _supervise_with_backoff(self: TaskCallbackSupervisor, task: asyncio.Task) -> None:
    """FastStream's supervisor restarts a failed consumer task at once, forever: a failure
    that repeats at once (a fault in the client, a server answering every fetch with an
    error) is a busy core, a log line per restart and a dead task kept per restart. Here
    the restarts of a task that keeps failing wait longer and longer, and the dead task
    is let go."""
    subscriber = self.subscriber
    exc = None if task.cancelled() else task.exception()
    if (exc is None or isinstance(exc, self.ignored_exceptions) or self.is_disabled
            or not self.restart_on_failure or task not in subscriber.tasks):
        _supervise(self, task)
        return
    now = time.monotonic()
    streak, started = _failures.get(id(subscriber), (0, now))
    if now - started >= HEALTHY_RUN:
        streak = 0
    delay = RESTART_DELAYS[min(streak, len(RESTART_DELAYS) - 1)]
    _failures[id(subscriber)] = (streak + 1, now + delay)

    def restart() -> None:
        if task in subscriber.tasks:  # stop() clears them: a stopped subscriber stays so
            _supervise(self, task)  # logs (once per kind of error) and starts a new task
            subscriber.tasks.remove(task)

    asyncio.get_running_loop().call_later(delay, restart)


TaskCallbackSupervisor.__call__ = _supervise_with_backoff  # every subscriber of the process


class ConnectionReport:
    """nats-py's callbacks as two log lines per outage: a warning when the connection
    goes, an info line with the time it was down when it is back. Errors the client
    meets while reconnecting are expected and stay at DEBUG; others are one line, never
    a traceback (the client handles them itself)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.client: NATS | None = None
        self._lost_at: float | None = None
        self._last_server = "?"

    def _server(self) -> str:
        """The server connected to (the last one, while disconnected)."""
        url = self.client.connected_url if self.client is not None else None
        if url is not None:
            self._last_server = f"{url.hostname}:{url.port}"
        return self._last_server

    def connected(self) -> None:
        self._server()  # remembered, to be named when the connection goes

    async def disconnected(self) -> None:
        if self._lost_at is None and self.client is not None and not self.client.is_closed:
            self._lost_at = time.monotonic()
            log.warning("%s lost its NATS connection (%s); reconnecting", self.name,
                        self._server())

    async def reconnected(self) -> None:
        lost_at, self._lost_at = self._lost_at, None
        down = f" after {time.monotonic() - lost_at:.1f} s" if lost_at is not None else ""
        log.info("%s reconnected to NATS (%s)%s", self.name, self._server(), down)

    async def error(self, exc: Exception) -> None:
        if isinstance(exc, OSError | TimeoutError | nats.errors.UnexpectedEOF |
                      nats.errors.StaleConnectionError | nats.errors.NoServersError):
            log.debug("%s: NATS connection error %r", self.name, exc)
        else:
            log.warning("%s: NATS error %s: %s", self.name, type(exc).__name__, exc)

    def callbacks(self) -> dict[str, Callable[..., Awaitable[None]]]:
        return {"disconnected_cb": self.disconnected, "reconnected_cb": self.reconnected,
                "error_cb": self.error}


class LoopContext(type(Context())):  # the class behind FastStream's Context()
    """FastStream's `Context` (a handler argument taken from the broker's context),
    resolved on the event loop. fast_depends runs a custom field's synchronous `use` in
    a worker thread: one thread round trip for every such argument of every message,
    which was most of what waking threads cost the orchestrator and the downloaders.
    Asynchronous, it is the same dictionary lookup, in place."""

    async def use(self, /, **kwargs: Any) -> dict[str, Any]:
        return super().use(**kwargs)


# The message being handled (acks, heartbeats, its metadata), for a handler's signature.
Message = Annotated[_NatsMessage, LoopContext("message")]


class Broker(NatsBroker):
    """FastStream's broker with the connection reported by `ConnectionReport`, able to
    stop while its server is away (draining needs a server, so a connection that is
    reconnecting is closed instead)."""

    def __init__(self, *args: Any, report: ConnectionReport, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._report = report

    async def connect(self, *args: Any, **kwargs: Any) -> NATS:
        connection = await super().connect(*args, **kwargs)
        self._report.client = connection
        self._report.connected()
        return connection

    async def stop(self, exc_type: type[BaseException] | None = None,
                   exc_val: BaseException | None = None, exc_tb: TracebackType | None = None,
                   ) -> None:
        try:
            await super().stop(exc_type, exc_val, exc_tb)
        except (nats.errors.ConnectionReconnectingError, nats.errors.ConnectionClosedError):
            if self._connection is not None:
                # Closing flushes what was published while reconnecting; with the server
                # gone the socket may fail under it, and the client is closed all the same.
                with contextlib.suppress(OSError):
                    await self._connection.close()
                self._connection = None
            self.config.disconnect()


def nats_broker(url: str, name: str, **options: Any) -> NatsBroker:
    """A FastStream broker with the project's connection options; nothing connects yet.
    FastStream logs through `tgdl.faststream`, so the service's log setup (one format,
    repeats summarised) applies to it too."""
    report = ConnectionReport(name)
    options.setdefault("logger", logging.getLogger("tgdl.faststream"))
    return Broker(servers(url), name=name, max_reconnect_attempts=-1,
                  reconnect_time_wait=RECONNECT_WAIT, report=report,
                  **report.callbacks(), **options)


async def connect(url: str, name: str) -> NATS:
    """A plain nats-py client with the same options (tools and tests)."""
    report = ConnectionReport(name)
    report.client = await nats.connect(servers=servers(url), name=name,
                                       max_reconnect_attempts=-1,
                                       reconnect_time_wait=RECONNECT_WAIT, **report.callbacks())
    report.connected()
    return report.client
