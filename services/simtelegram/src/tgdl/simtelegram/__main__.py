"""``python -m tgdl.simtelegram``: serve the simulated Telegram (settings from TGDL_SIM_*)."""

from __future__ import annotations

import uvicorn

from tgdl.simtelegram.server import create_app
from tgdl.simtelegram.settings import SimSettings


def main() -> None:
    settings = SimSettings()
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="warning")


if __name__ == "__main__":
    main()
