from __future__ import annotations

from pydantic import Field

from tgdl.contracts.config import CommonSettings


class OrchestratorSettings(CommonSettings):
    replica: str = Field(default="orchestrator")
    sweep_interval: float = Field(default=5.0, gt=0)  # seconds between stalled-dispatch sweeps
    # A waiting job climbs one priority class per this many seconds (tgdl.bus.admission).
    priority_aging: float = Field(default=60.0, gt=0)
