"""How every tgdl service process runs: one place for logging, signals and shutdown.

`run_service` is the `main()` of the NATS services: SIGINT/SIGTERM set a stop event the
service awaits, it stops cleanly and the process exits 0. `serve_http` does the same for
the HTTP services on uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings

from tgdl.contracts.config import settings_problems
from tgdl.runtime.jsonlog import JsonFormatter, json_logs
from tgdl.runtime.metrics import start_metrics_server
from tgdl.runtime.quiet import QuietLogs, expect, expected_outage

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

__all__ = ["CONFIG_ERROR", "QuietLogs", "ServiceStopped", "expect", "expected_outage",
           "load_settings", "run_service", "serve_http", "setup_logging", "until_reachable"]

CONFIG_ERROR = 2  # the exit code of a service whose settings cannot work: retrying won't help
S = TypeVar("S", bound=BaseSettings)


def load_settings(cls: type[S], service: str) -> S:
    """The service's settings from the environment; a bad one is a line naming the
    variable and exit code 2, not a traceback."""
    try:
        return cls()
    except ValidationError as exc:
        print(f"{service} cannot start: {'; '.join(settings_problems(exc, cls))}",
              file=sys.stderr)
        sys.exit(CONFIG_ERROR)


def setup_logging(level: int = logging.INFO) -> None:
    """One format for every service (one JSON object per line with TGDL_LOG_FORMAT=json);
    expected network errors without tracebacks and repeats summarised (see `QuietLogs`)."""
    logging.basicConfig(level=level, format=LOG_FORMAT)
    # httpx says every request at INFO: a line per part and per hash a downloader asks for,
    # and one per catalog poll, forever. Its warnings and errors still show.
    logging.getLogger("httpx").setLevel(max(level, logging.WARNING))
    quiet = QuietLogs()
    for handler in logging.getLogger().handlers:
        if json_logs():
            handler.setFormatter(JsonFormatter())
        if not any(isinstance(f, QuietLogs) for f in handler.filters):
            handler.addFilter(quiet)


class ServiceStopped(Exception):
    """Told to stop while waiting for a server: `run_service` exits 0."""


async def until_reachable(what: str, attempt: Callable[[], Awaitable[Any]],
                          log: logging.Logger, stop: asyncio.Event | None = None,
                          limit: float = 5.0) -> Any:
    """`await attempt()` until it stops failing with an outage (a server not up yet): a
    service started during an outage waits for it, saying so once, instead of crashing
    into the supervisor's growing back-off. Raises ServiceStopped if `stop` is set."""
    delay, said = 0.25, False
    while True:
        try:
            result = await attempt()
        except Exception as exc:
            if not expected_outage(exc):
                raise
            if not said:
                log.warning("%s is unreachable (%s); waiting for it", what, type(exc).__name__)
                said = True
            if stop is None:
                await asyncio.sleep(delay)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                if stop.is_set():
                    raise ServiceStopped(f"stopped while waiting for {what}") from None
            delay = min(delay * 2, limit)
            continue
        if said:
            log.info("%s is reachable", what)
        return result


def run_service(name: str, serve: Callable[[asyncio.Event], Awaitable[None]],
                expected: tuple[type[BaseException], ...] = ()) -> None:
    """Run `serve(stop)` until it returns; the first SIGINT/SIGTERM sets `stop`. An
    outage that ends the service (a lost server, or one of `expected`) is one line and
    exit code 1, for the supervisor to start it again."""
    setup_logging()
    expect(*expected)
    start_metrics_server(name)  # only when TGDL_METRICS_PORT is set
    log = logging.getLogger(f"tgdl.{name}")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        with contextlib.suppress(ServiceStopped):
            await serve(stop)
        log.info("%s stopped", name)

    try:
        asyncio.run(main())
    except Exception as exc:
        if not expected_outage(exc):
            raise
        # e.g. started while PostgreSQL or NATS is down: one line, and the supervisor
        # starts it again with back-off
        log.error("%s stopped: a server it needs is unreachable (%s: %s)", name,
                  type(exc).__name__, exc)
        sys.exit(1)


_http_stop = asyncio.Event()  # set when serve_http is told to stop


def http_stopping() -> asyncio.Event:
    """Set once the HTTP server is told to stop: an app's startup that waits for a server
    (`until_reachable(..., stop=http_stopping())`) gives up then, instead of holding the
    process, since uvicorn only acts on the signal after startup."""
    return _http_stop


def serve_http(app: Any, host: str, port: int, log_level: str = "info") -> None:
    """Serve an ASGI app until SIGINT/SIGTERM, then exit 0 after a graceful shutdown."""
    import uvicorn

    class Server(uvicorn.Server):
        # uvicorn re-raises the signal after its graceful shutdown; a clean stop exits 0
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():
                try:
                    yield
                finally:
                    self._captured_signals.clear()

        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            with contextlib.suppress(RuntimeError):  # no loop running yet: nothing waits
                asyncio.get_running_loop().call_soon_threadsafe(_http_stop.set)

    # JSON lines: uvicorn's own loggers (access log included) go through the root handler
    # instead of the text handlers uvicorn would install.
    plain = {"log_config": None} if json_logs() else {}
    Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, **plain)).run()
