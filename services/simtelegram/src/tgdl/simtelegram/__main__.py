"""``python -m tgdl.simtelegram``: serve the simulated Telegram (settings from TGDL_SIM_*)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import uvicorn

from tgdl.simtelegram.server import create_app
from tgdl.simtelegram.settings import SimSettings


class _Server(uvicorn.Server):
    # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown; a clean stop exits 0.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            try:
                yield
            finally:
                self._captured_signals.clear()


def main() -> None:
    settings = SimSettings()
    config = uvicorn.Config(create_app(settings), host=settings.host, port=settings.port,
                            log_level="warning")
    _Server(config).run()


if __name__ == "__main__":
    main()
