from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from tgdl.contracts.config import CommonSettings


class ProjectorSettings(CommonSettings):
    # Progress reaches the database at most once per this many seconds (the requirement:
    # about one progress write per second per file). Only TGDL_PROGRESS_FLUSH_INTERVAL sets
    # it: TGDL_PROGRESS_INTERVAL paces the downloaders' reports. (A validation alias would
    # be read from the environment without the TGDL_ prefix.)
    progress_flush_interval: float = Field(default=1.0, ge=0)
    # Batch snapshots on NATS: at most one per batch per this many seconds.
    snapshot_interval: float = Field(default=0.5, ge=0)
    # Messages applied in one transaction when many are waiting.
    max_batch: int = Field(default=500, ge=1)
    # Seconds the writer lets messages gather after the first of a round before applying
    # them: what one file's end causes (its outcome, then FileCompleted and the next
    # permit, then the next job's dispatch) arrives within a few ms, and applied together
    # it writes each row and each stream position once. The read model is that much later.
    apply_delay: float = Field(default=0.05, ge=0, le=1)

    @model_validator(mode="before")
    @classmethod
    def _interval_by_its_short_name(cls, data: Any) -> Any:
        # `progress_interval=` in code, as everywhere else it is spelt
        if isinstance(data, dict) and "progress_interval" in data:
            data = dict(data)
            data["progress_flush_interval"] = data.pop("progress_interval")
        return data

    @property
    def progress_interval(self) -> float:
        return self.progress_flush_interval
