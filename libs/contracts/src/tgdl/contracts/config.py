"""Settings every service shares, read from ``TGDL_*`` environment variables."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tgdl.contracts.paths import DEFAULT_NAME_TEMPLATE, NameTemplate
from tgdl.contracts.subjects import Names


def chat_key(chat: str) -> str:
    """A chat as the allow-list compares it: `@MyChannel`, `MyChannel` and `mychannel`
    are one chat (Telegram usernames ignore case); a numeric id stays as it is."""
    return chat.strip().removeprefix("@").lower()


def narrowed(allowed: frozenset[str] | None,
             limit: Iterable[str] | None) -> frozenset[str] | None:
    """The chats both the allow-list and a caller's limit let through (None: any)."""
    if limit is None:
        return allowed
    keys = frozenset(chat_key(c) for c in limit)
    return keys if allowed is None else allowed & keys


# Settings whose values are never repeated in an error (a log may be read by others).
_SECRET = re.compile(r"token|hash|secret|password|url|key|session|proxy", re.IGNORECASE)


def settings_problems(exc: ValidationError, settings: type[BaseSettings]) -> list[str]:
    """What is wrong with the environment, in its own words: `TGDL_GLOBAL_CAP='abc':
    Input should be a valid integer, ...`, one per problem. (Pydantic's text names the
    field, not the variable to fix, and adds error types and a URL.)"""
    prefix = str(settings.model_config.get("env_prefix", ""))
    problems = []
    for err in exc.errors():
        what = str(err.get("msg", "is invalid")).removeprefix("Value error, ")
        field = ".".join(str(p) for p in err.get("loc", ()))
        if not field:  # a rule across settings: its message names them
            problems.append(what)
            continue
        value = err.get("input")
        shown = ("" if err.get("type") == "missing" or _SECRET.search(field)
                 or not isinstance(value, str | int | float) else f"={value!r}")
        problems.append(f"{prefix}{field}".upper() + f"{shown}: {what}")
    return problems


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TGDL_", extra="ignore")

    nats_url: str = "nats://127.0.0.1:4222"
    database_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    db_schema: str = Field(default="tgdl", pattern=r"^[a-z_][a-z0-9_]*$")
    namespace: str = Field(default="tgdl", pattern=r"^[A-Za-z0-9_-]+$")
    media_root: Path = Path("./media")
    max_batch_ids: int = Field(default=50, ge=1, le=1000)  # files per batch request

    # The download queue (JetStream consumer shared by every downloader replica).
    # Seconds a job may go without a heartbeat before another replica takes it over (from
    # its .part); downloaders heartbeat every ack_wait/4. Short means a dead replica's
    # files continue within seconds; the cost is one heartbeat per running file a second.
    ack_wait: float = Field(default=4.0, gt=0, lt=60)
    # The same for outcomes an orchestrator took but never acknowledged (it died): they
    # go to another (or the restarted) orchestrator after this long.
    outcome_ack_wait: float = Field(default=2.0, gt=0, lt=60)
    max_deliver: int = Field(default=6, ge=1)  # attempts before a job ends as failed
    global_cap: int = Field(default=8, ge=1)  # downloads in flight across all batches
    stream_replicas: int = Field(default=1, ge=1, le=5)  # 3 on a NATS cluster

    # What NATS may keep (tgdl migrate applies them; see tgdl.bus.topology for what each
    # stream does when full). Counts, not bytes: every message also has a size cap, and
    # JetStream reserves a byte limit on disk up front for every stream that has one.
    events_max_msgs: int = Field(default=5_000_000, ge=100)  # batch logs: full refuses
    outcomes_max_msgs: int = Field(default=1_000_000, ge=100)  # oldest dropped
    jobs_max_msgs: int = Field(default=100_000, ge=100)  # queued jobs: full refuses
    progress_max_msgs: int = Field(default=100_000, ge=100)  # oldest dropped
    bucket_max_keys: int = Field(default=100_000, ge=100)  # each KV bucket: full refuses

    # `tgdl prune` forgets batches finished longer ago than this (days; files stay).
    retention_days: float = Field(default=30.0, gt=0)

    # Chats that may be read, comma-separated usernames or ids; empty: every chat. Applied
    # everywhere: a start (access_denied), the message list, /media/ and the downloader.
    # A chat counts by every name the catalog reached it by.
    allowed_chats: str = ""

    # Where files go under the media root (placeholders in tgdl.contracts.paths); a batch
    # may bring its own, and keeps the one it started with.
    name_template: str = DEFAULT_NAME_TEMPLATE

    @field_validator("name_template")
    @classmethod
    def _usable_template(cls, text: str) -> str:
        NameTemplate.parse(text)  # refused at startup, saying what is wrong
        return text

    @property
    def allowed_chat_set(self) -> frozenset[str] | None:
        chats = frozenset(chat_key(c) for c in self.allowed_chats.split(",") if c.strip())
        return chats or None

    def chat_allowed(self, chat: str, *other_names: str) -> bool:
        """Whether the allow-list lets `chat` be read, by its name or any other one."""
        allowed = self.allowed_chat_set
        return allowed is None or any(chat_key(c) in allowed for c in (chat, *other_names))

    @property
    def names(self) -> Names:
        return Names(self.namespace)
