"""Settings every service shares, read from ``TGDL_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from tgdl.contracts.subjects import Names


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TGDL_", extra="ignore")

    nats_url: str = "nats://127.0.0.1:4222"
    database_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    db_schema: str = Field(default="tgdl", pattern=r"^[a-z_][a-z0-9_]*$")
    namespace: str = Field(default="tgdl", pattern=r"^[A-Za-z0-9_-]+$")
    media_root: Path = Path("./media")

    @property
    def names(self) -> Names:
        return Names(self.namespace)
