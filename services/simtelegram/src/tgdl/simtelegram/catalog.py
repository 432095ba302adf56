"""A deterministic demo catalog: the messages the simulated Telegram knows about.

The same arguments always give the same messages, in every process: all randomness comes
from one `random.Random(seed)`. A few messages carry fault flags so demos can show how
failures are reported: `deleted` (removed in Telegram after it was catalogued) and
`forbidden` (in a chat the account lost access to). Forwards (`forwards=N`) come after
the `count` messages: each carries an earlier message's file (same file id and bytes), as
a document or photo forwarded in Telegram does, half of them in a second chat.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tgdl.contracts.catalog import CatalogEntry, FileLocation, MediaKind

DEMO_CHAT = "sim_demo"
PRIVATE_CHAT = "sim_private"  # the chat the account lost access to
FORWARDS_CHAT = "sim_forwards"  # where half of the forwards land
TELEGRAM_ID_OFFSET = 1000  # telegram_message_id = TELEGRAM_ID_OFFSET + message_id


@dataclass(frozen=True)
class SimMessage:
    message_id: int
    chat: str
    telegram_message_id: int
    media_kind: MediaKind | None
    file_name: str | None
    mime_type: str | None
    size: int | None
    date: datetime
    caption: str | None = None
    dc_id: int | None = None
    deleted: bool = False
    forbidden: bool = False
    # Telegram's id of the file (a document's or photo's): its own message id unless it
    # forwards another message's file. The bytes are the file's (see content).
    file_id: int | None = None

    def __post_init__(self) -> None:
        if self.file_id is None:
            object.__setattr__(self, "file_id", self.message_id)

    def to_entry(self) -> CatalogEntry:
        """The message as a sync saw it (fault flags are Telegram's secret)."""
        return CatalogEntry(
            message_id=self.message_id,
            chat=self.chat,
            telegram_message_id=self.telegram_message_id,
            media_kind=self.media_kind,
            file_name=self.file_name,
            mime_type=self.mime_type,
            size=self.size,
            date=self.date,
            caption=self.caption,
            location=self.location(),
        )

    def location(self) -> FileLocation | None:
        """The simulated Telegram serves a file by its message: no reference to keep; the
        id is the file's, shared by its forwards."""
        if self.media_kind is None or self.size is None:
            return None
        return FileLocation(
            kind="photo" if self.media_kind is MediaKind.photo else "document",
            id=self.file_id, dc_id=self.dc_id, size=self.size,
        )


class NewMessage(BaseModel):
    """A message posted while the simulated Telegram runs (POST /chats/{chat}/messages)."""

    model_config = ConfigDict(extra="forbid")

    media_kind: MediaKind | None = None  # None: a text message
    size: int | None = Field(default=None, ge=1, le=4 * 2**30)
    file_name: str | None = Field(default=None, max_length=255)
    mime_type: str | None = Field(default=None, max_length=255)
    caption: str | None = Field(default=None, max_length=4096)

    @model_validator(mode="after")
    def _media_has_a_size(self) -> NewMessage:
        if (self.media_kind is None) != (self.size is None):
            raise ValueError("a media message has a size, a text message none")
        return self

    def message(self, message_id: int, chat: str) -> SimMessage:
        return SimMessage(
            message_id=message_id, chat=chat,
            telegram_message_id=TELEGRAM_ID_OFFSET + message_id,
            media_kind=self.media_kind, file_name=self.file_name,
            mime_type=self.mime_type or _DEFAULT_MIME.get(self.media_kind),
            size=self.size, date=datetime.now(UTC), caption=self.caption,
            dc_id=2 if self.media_kind else None,
        )


_DEFAULT_MIME = {MediaKind.photo: "image/jpeg", MediaKind.video: "video/mp4",
                 MediaKind.document: "application/octet-stream", MediaKind.audio: "audio/mpeg",
                 MediaKind.voice: "audio/ogg", None: None}

# Share of each kind in the catalog; None is a text message without media (~5%).
_KIND_SHARES: dict[MediaKind | None, float] = {
    MediaKind.photo: 0.30,
    MediaKind.video: 0.20,
    MediaKind.document: 0.25,
    MediaKind.audio: 0.12,
    MediaKind.voice: 0.08,
    None: 0.05,
}

# Where each kind's sizes fall, as fractions of the log-scale span [min_size, max_size].
_SIZE_SPAN: dict[MediaKind, tuple[float, float]] = {
    MediaKind.photo: (0.0, 0.45),
    MediaKind.voice: (0.05, 0.5),
    MediaKind.audio: (0.35, 0.75),
    MediaKind.document: (0.0, 1.0),
    MediaKind.video: (0.5, 1.0),
}

_DOCUMENTS: list[tuple[str, str]] = [
    ("report-{year}-q{q}.pdf", "application/pdf"),
    ("slides_{word}.pptx",
     "application/vnd.openxmlformats-officedocument.presentationml.presentation"),
    ("budget {year}.xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
    ("{word}-backup.zip", "application/zip"),
    ("dataset_{n}.csv", "text/csv"),
    ("notes-{word}.txt", "text/plain"),
    ("Отчёт {year}.pdf", "application/pdf"),
    ("{word}_v{q}.tar.gz", "application/gzip"),
    ("installer-{n}.apk", "application/vnd.android.package-archive"),
]
_AUDIO: list[tuple[str, str]] = [
    ("{artist} - {title}.mp3", "audio/mpeg"),
    ("{artist} - {title}.flac", "audio/flac"),
    ("{title} (live).m4a", "audio/mp4"),
]
_VIDEOS: list[tuple[str, str]] = [
    ("VID_{stamp}.mp4", "video/mp4"),
    ("{word} trip {year}.mov", "video/quicktime"),
    ("screen-recording-{n}.mp4", "video/mp4"),
    ("{word}.webm", "video/webm"),
]
_NAMED = {MediaKind.video: _VIDEOS, MediaKind.audio: _AUDIO, MediaKind.document: _DOCUMENTS}
_WORDS = ["alps", "harbor", "meetup", "garden", "project", "lecture", "birthday", "kyoto"]
_ARTISTS = ["Nightjar", "The Lanterns", "Mira Sol", "Quiet Harbour", "Ensemble Nord"]
_TITLES = ["Morning Tide", "Paper Boats", "Northern Lights", "Slow River", "Glasshouse"]
_CAPTIONS = ["", "", "", "from last week", "see attached", "🎉", "for the archive"]
_DC_IDS = [1, 2, 4, 5]


def _kind_plan(count: int, rng: random.Random) -> list[MediaKind | None]:
    """Exact quotas per kind (so every kind appears), in a seeded shuffled order."""
    plan: list[MediaKind | None] = []
    for kind, share in _KIND_SHARES.items():
        plan += [kind] * max(1, int(count * share))
    kinds, weights = list(_KIND_SHARES), list(_KIND_SHARES.values())
    plan += rng.choices(kinds, weights, k=max(0, count - len(plan)))
    rng.shuffle(plan)
    return plan[:count]


def _size(kind: MediaKind, min_size: int, max_size: int, rng: random.Random) -> int:
    low, high = math.log(min_size), math.log(max_size)
    first, last = _SIZE_SPAN[kind]
    fraction = rng.uniform(first, last)
    return max(min_size, min(max_size, round(math.exp(low + fraction * (high - low)))))


def _name(kind: MediaKind, when: datetime, rng: random.Random) -> tuple[str | None, str]:
    fields = {
        "year": when.year,
        "q": rng.randint(1, 4),
        "n": rng.randint(100, 9999),
        "word": rng.choice(_WORDS),
        "artist": rng.choice(_ARTISTS),
        "title": rng.choice(_TITLES),
        "stamp": when.strftime("%Y%m%d_%H%M%S"),
    }
    if kind is MediaKind.photo:
        return f"IMG_{fields['stamp']}.jpg", "image/jpeg"
    if kind is MediaKind.voice:
        return None, "audio/ogg"  # Telegram voice notes carry no file name
    pattern, mime = rng.choice(_NAMED[kind])
    return pattern.format(**fields), mime


def demo_catalog(
    count: int = 240, min_size: int = 10_000, max_size: int = 200 * 2**20, seed: int = 1,
    forwards: int = 0,
) -> list[SimMessage]:
    """`count` messages with ids 1..count, then `forwards` forwards of their files with
    ids count+1..count+forwards; the same for the same arguments."""
    if count < 1:
        raise ValueError("count must be >= 1")
    if not 1 <= min_size <= max_size:
        raise ValueError("sizes must satisfy 1 <= min_size <= max_size")
    rng = random.Random(seed)
    plan = _kind_plan(count, rng)
    when = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)
    messages: list[SimMessage] = []
    for message_id, kind in enumerate(plan, start=1):
        when += timedelta(minutes=rng.randint(1, 600), seconds=rng.randint(0, 59))
        caption = rng.choice(_CAPTIONS) or None
        media: dict = {"media_kind": None, "file_name": None, "mime_type": None, "size": None}
        if kind is None:
            caption = caption or "just text"
        else:
            file_name, mime_type = _name(kind, when, rng)
            media = {"media_kind": kind, "file_name": file_name, "mime_type": mime_type,
                     "size": _size(kind, min_size, max_size, rng),
                     "dc_id": rng.choice(_DC_IDS)}
        messages.append(SimMessage(
            message_id=message_id, chat=DEMO_CHAT,
            telegram_message_id=TELEGRAM_ID_OFFSET + message_id,
            date=when, caption=caption, **media,
        ))
    return _with_forwards(_with_faults(messages, rng), forwards, rng)


def _with_forwards(messages: list[SimMessage], forwards: int,
                   rng: random.Random) -> list[SimMessage]:
    """Append `forwards` messages, each forwarding a readable earlier message's file (the
    first two forward the same one, so one file is in three messages)."""
    sources = [m for m in messages if m.media_kind is not None and not m.deleted
               and not m.forbidden]
    if not forwards or not sources:
        return messages
    picked = [rng.choice(sources) for _ in range(forwards)]
    picked[1:2] = picked[:1] if forwards > 1 else []
    when = messages[-1].date
    result = list(messages)
    for i, source in enumerate(picked):
        message_id = len(messages) + i + 1
        when += timedelta(minutes=rng.randint(1, 600))
        result.append(replace(
            source, message_id=message_id, chat=FORWARDS_CHAT if i % 2 else DEMO_CHAT,
            telegram_message_id=TELEGRAM_ID_OFFSET + message_id, date=when,
            caption=f"forwarded from message {source.message_id}", file_id=source.file_id))
    return result


def _with_faults(messages: list[SimMessage], rng: random.Random) -> list[SimMessage]:
    """Mark a couple of media messages deleted and a couple forbidden (none in tiny catalogs)."""
    with_media = [m.message_id for m in messages if m.media_kind is not None]
    per_fault = min(2, len(with_media) // 10)
    chosen = rng.sample(with_media, 2 * per_fault)
    deleted, forbidden = set(chosen[:per_fault]), set(chosen[per_fault:])
    result: list[SimMessage] = []
    for m in messages:
        if m.message_id in deleted:
            m = replace(m, deleted=True)
        elif m.message_id in forbidden:
            m = replace(m, chat=PRIVATE_CHAT, forbidden=True)
        result.append(m)
    return result
