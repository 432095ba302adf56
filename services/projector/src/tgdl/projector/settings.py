from __future__ import annotations

from pydantic import AliasChoices, Field

from tgdl.contracts.config import CommonSettings


class ProjectorSettings(CommonSettings):
    # Progress reaches the database at most once per this many seconds (the requirement:
    # about one progress write per second per file). Its environment variable is
    # TGDL_PROGRESS_FLUSH_INTERVAL: TGDL_PROGRESS_INTERVAL paces the downloaders' reports.
    progress_interval: float = Field(
        default=1.0, ge=0,
        validation_alias=AliasChoices("progress_interval", "tgdl_progress_flush_interval"),
    )
    # Batch snapshots on NATS: at most one per batch per this many seconds.
    snapshot_interval: float = Field(default=0.5, ge=0)
    # Messages applied in one transaction when many are waiting.
    max_batch: int = Field(default=500, ge=1)
