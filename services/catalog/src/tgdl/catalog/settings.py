from __future__ import annotations

from typing import Literal

from pydantic import Field

from tgdl.contracts.config import CommonSettings
from tgdl.telegram.client import TelegramSettings


class CatalogSettings(CommonSettings, TelegramSettings):
    telegram: Literal["sim", "telethon"] = "sim"
    sim_url: str = "http://127.0.0.1:8100"
    replica: str = "catalog"
    # Seconds between two syncs of the watched chats: the simulated Telegram's new
    # messages are found this way (default 5); with an account it is the safety net
    # behind Telegram's own updates, which are missed while disconnected (default 60).
    sync_interval: float | None = Field(default=None, gt=0)

    @property
    def interval(self) -> float:
        if self.sync_interval is not None:
            return self.sync_interval
        return 60.0 if self.telegram == "telethon" else 5.0
