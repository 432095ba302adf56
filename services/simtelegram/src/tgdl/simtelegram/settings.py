"""How the simulated Telegram runs, read from ``TGDL_SIM_*`` environment variables."""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MAX_MEDIA_SIZE = 4 * 2**30  # Telegram's own upper bound for one file


class SimSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TGDL_SIM_", extra="ignore")

    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=8100, ge=0, le=65535)  # 0: any free port
    bandwidth: int = Field(default=4_000_000, ge=0)  # bytes/s per connection; 0 = unlimited
    latency: float = Field(default=0.05, ge=0, le=60)  # seconds before each answer
    account_bandwidth: int = Field(default=0, ge=0)  # bytes/s over all connections; 0 = no cap
    max_connections: int = Field(default=0, ge=0)  # beyond: a flood wait; 0 = no limit

    # The demo catalog (see catalog.demo_catalog).
    count: int = Field(default=240, ge=1, le=1_000_000)
    min_size: int = Field(default=10_000, ge=1, le=MAX_MEDIA_SIZE)
    max_size: int = Field(default=200 * 2**20, ge=1, le=MAX_MEDIA_SIZE)
    seed: int = 1
    # Messages appended after the `count` above that forward an earlier message's file
    # (same file id, same bytes), in the demo chat and in a second one.
    forwards: int = Field(default=8, ge=0, le=100_000)

    @model_validator(mode="after")
    def _sizes_in_order(self) -> Self:
        if self.min_size > self.max_size:
            raise ValueError("min_size must not exceed max_size")
        return self

    @property
    def base_url(self) -> str:
        """Where clients reach the server (a wildcard host is reached over loopback)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        host = "[::1]" if host == "::" else (f"[{host}]" if ":" in host else host)
        return f"http://{host}:{self.port}"
