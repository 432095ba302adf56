from __future__ import annotations

from pydantic import Field

from tgdl.contracts.config import CommonSettings


class OrchestratorSettings(CommonSettings):
    # Chats the callers may download from, comma-separated; empty: every chat in the
    # catalog. Requests for other chats are refused with "access_denied".
    allowed_chats: str = ""
    replica: str = Field(default="orchestrator")
    sweep_interval: float = Field(default=5.0, gt=0)  # seconds between stalled-dispatch sweeps

    @property
    def allowed_chat_set(self) -> frozenset[str] | None:
        chats = frozenset(c.strip() for c in self.allowed_chats.split(",") if c.strip())
        return chats or None
