"""Watch rules and the catalog service's commands.

A watch rule names a chat and a filter; the catalog service keeps that chat's catalog in
sync and starts batches for the new media that match, by itself. The filter's one home
is `RuleFilter.matches`. The HTTP bodies (`RuleCreate`, `RulePatch`, `WatchRule`) and
the request/reply commands the gateway (or `tgdl sync`) sends to the catalog service
live here; the gateway alone chooses status codes and wording.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from functools import lru_cache
from typing import Annotated, Literal

import re2
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    field_validator,
    model_validator,
)

from tgdl.contracts.catalog import CatalogEntry, MediaKind
from tgdl.contracts.paths import NameTemplate

RULE_ID_PATTERN = r"^rule_[0-9a-f]{8}$"
MAX_REGEX_LENGTH = 500


@lru_cache(maxsize=256)
def caption_pattern(pattern: str) -> re2._Regexp:
    """A rule's caption pattern, compiled by RE2: matching takes time linear in the
    caption whatever the pattern (Python's `re` can backtrack for minutes on a pattern such
    as `(a+)+$`, and anyone who may create a rule chooses the pattern). RE2 has no
    backreferences or lookaround; such a pattern is refused when the rule is created."""
    options = re2.Options()
    options.log_errors = False  # the refusal is the caller's answer, not a log line
    return re2.compile(pattern, options)


class RuleFilter(BaseModel):
    """Which media of the chat a rule starts: every field narrows (empty: any)."""

    model_config = ConfigDict(frozen=True)

    chat: str = Field(min_length=1, max_length=200,
                      description="chat username (e.g. @channel) or numeric id")
    media_types: list[MediaKind] = Field(
        default=[], description="photo, video, document, audio, voice; empty: any media")
    min_size: StrictInt | None = Field(default=None, ge=0, description="bytes, inclusive")
    max_size: StrictInt | None = Field(default=None, ge=0, description="bytes, inclusive")
    caption_regex: str | None = Field(
        default=None, max_length=MAX_REGEX_LENGTH,
        description="a regular expression (RE2 syntax: no backreferences or lookaround) "
                    "searched in the caption (a message without a caption has an empty "
                    "one); `(?i)` ignores case")

    @field_validator("chat")
    @classmethod
    def _chat(cls, chat: str) -> str:
        chat = chat.strip()
        if not chat or any(c.isspace() for c in chat):
            raise ValueError("a chat is a username (@channel) or a numeric id, without spaces")
        return chat

    @field_validator("media_types")
    @classmethod
    def _unique(cls, kinds: list[MediaKind]) -> list[MediaKind]:
        return list(dict.fromkeys(kinds))

    @field_validator("caption_regex")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        if pattern is None:
            return None
        try:
            caption_pattern(pattern)
        except re2.error as exc:
            reason = exc.args[0].decode(errors="replace") if exc.args else "invalid"
            raise ValueError(
                f"not a valid regular expression (RE2 syntax, without "
                f"backreferences or lookaround): {reason}") from None
        return pattern

    @model_validator(mode="after")
    def _size_range(self) -> RuleFilter:
        if (self.min_size is not None and self.max_size is not None
                and self.min_size > self.max_size):
            raise ValueError("min_size must not exceed max_size")
        return self

    def matches(self, entry: CatalogEntry) -> bool:
        """Whether a message of the rule's chat is one to download (the chat itself is
        chosen by whoever lists the candidates)."""
        if entry.media_kind is None:
            return False
        if self.media_types and entry.media_kind not in self.media_types:
            return False
        if self.min_size is not None and (entry.size is None or entry.size < self.min_size):
            return False
        if self.max_size is not None and (entry.size is None or entry.size > self.max_size):
            return False
        if self.caption_regex is not None:
            return caption_pattern(self.caption_regex).search(entry.caption or "") is not None
        return True


class RuleSettings(BaseModel):
    """How the batches a rule starts are run."""

    model_config = ConfigDict(frozen=True)

    enabled: StrictBool = Field(default=True, description="false: paused, nothing starts")
    max_concurrent: StrictInt = Field(default=3, ge=1, le=5,
                                description="max_concurrent of every batch it starts")
    name_template: str | None = Field(
        default=None, min_length=1, max_length=300,
        description="where its batches' files go (as a start's name_template); none: "
                    "TGDL_NAME_TEMPLATE")

    @field_validator("name_template")
    @classmethod
    def _usable_template(cls, text: str | None) -> str | None:
        if text is not None:  # refused now, as a start's would be, not at every start
            NameTemplate.parse(text)  # a TemplateError says what is wrong with it
        return text


class RuleCreate(RuleFilter, RuleSettings):
    """The body of POST /api/rules, and the command that creates the rule."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    include_existing: StrictBool = Field(
        default=False,
        description="also start the chat's matching messages already in the catalog "
                    "(`tgdl sync` lists a chat's history), in batches of the batch limit; "
                    "false: only messages newer than the rule")


class RulePatch(BaseModel):
    """The body of PATCH /api/rules/{rule_id}: pause (false) or resume (true)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: StrictBool


class WatchRule(RuleFilter, RuleSettings):
    """A stored rule, as listed."""

    rule_id: str
    created_at: datetime
    batches_started: int = 0
    files_started: int = 0
    last_batch_id: str | None = None


class RulePage(BaseModel):
    rules: list[WatchRule]


# --- commands to the catalog service ---------------------------------------------------------


class CreateRule(BaseModel):
    model_config = ConfigDict(frozen=True)

    rule: RuleCreate


class UpdateRule(BaseModel):
    model_config = ConfigDict(frozen=True)

    rule_id: str = Field(pattern=RULE_ID_PATTERN)
    enabled: bool


class DeleteRule(BaseModel):
    model_config = ConfigDict(frozen=True)

    rule_id: str = Field(pattern=RULE_ID_PATTERN)


class SyncChat(BaseModel):
    """List a chat's new messages into the catalog (`tgdl sync`)."""

    model_config = ConfigDict(frozen=True)

    chat: str = Field(min_length=1, max_length=200)
    limit: int | None = Field(default=None, ge=1)  # the first sync: only the newest N


class SyncResult(BaseModel):
    type: Literal["SyncResult"] = "SyncResult"
    chat: str  # as stored in the catalog
    scanned: int  # messages read from Telegram in this run
    added: int  # catalog rows that did not exist before
    newest_telegram_id: int  # the newest message synced so far

    def __str__(self) -> str:
        return (f"{self.scanned} messages read, {self.added} added to the catalog as "
                f"{self.chat!r}, newest message {self.newest_telegram_id}")


FETCH_MAX = 100  # message ids one FetchMessages asks for (one getMessages call)


class FetchMessages(BaseModel):
    """Add messages to the catalog by their chat and ids in it (links to messages no sync
    listed yet); the chat's sync mark does not move."""

    model_config = ConfigDict(frozen=True)

    chat: str = Field(min_length=1, max_length=200)
    telegram_message_ids: list[Annotated[int, Field(ge=1, le=2**63 - 1)]] = Field(
        min_length=1, max_length=FETCH_MAX)


class FetchResult(BaseModel):
    type: Literal["FetchResult"] = "FetchResult"
    chat: str  # as stored in the catalog
    stored: list[int]  # the ids (in the chat) now in the catalog: those with media


class RuleResult(BaseModel):
    type: Literal["RuleResult"] = "RuleResult"
    rule: WatchRule


class CatalogRejectReason(StrEnum):
    invalid_command = "invalid_command"
    unknown_chat = "unknown_chat"  # Telegram (or the simulated one) knows no such chat
    rule_not_found = "rule_not_found"
    sync_failed = "sync_failed"  # the chat could not be read; the detail says why
    telegram_unavailable = "telegram_unavailable"  # Telegram (or the simulated one) is away
    database_unavailable = "database_unavailable"  # PostgreSQL did not answer
    internal = "internal_error"


class CatalogRejection(BaseModel):
    reason: CatalogRejectReason
    detail: str


class CatalogReply(BaseModel):
    ok: Annotated[SyncResult | RuleResult | FetchResult, Field(discriminator="type")] | None = None
    rejected: CatalogRejection | None = None
