"""``python -m tgdl.simtelegram``: serve the simulated Telegram (settings from TGDL_SIM_*)."""

from __future__ import annotations

from tgdl.runtime import load_settings, serve_http
from tgdl.simtelegram.server import create_app
from tgdl.simtelegram.settings import SimSettings


def main() -> None:
    settings = load_settings(SimSettings, "simtelegram")
    serve_http(create_app(settings), settings.host, settings.port, log_level="warning")


if __name__ == "__main__":
    main()
