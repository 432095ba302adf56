"""Where a message's media is stored, and how Telegram-provided names are made safe.

Where a file goes is a naming template (`NameTemplate`): by default
``{kind}s/{message_id}_{telegram_message_id}_{name}``, i.e.
``<media_root>/<kind>s/<message_id>_<telegram_message_id>_<name>``. A batch's template is
fixed when it starts (`BatchStarted.name_template`), so a restart or a changed setting
never moves its files. Everything a template puts in a path comes from Telegram (names,
captions, chats) and is untrusted: every rendered segment goes through the same rules as
file names (no separators, no ``..``, no control characters, bounded length, no reserved
names), and the file name must start with the message id, so two messages can never be
given the same path.
"""

from __future__ import annotations

import mimetypes
import re
import string
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import PurePath, PurePosixPath
from typing import TypeVar

from tgdl.contracts.catalog import CatalogEntry, MediaKind

MAX_NAME_BYTES = 150  # leaves room for the id prefix and ".part" under common 255-byte limits
# A whole rendered segment (the file name with its id prefix, or a folder): room left for
# ".parts.part" under the common 255-byte limit.
MAX_SEGMENT_BYTES = 200
PART_SUFFIX = ".part"
# Beside the .part file, which parts of it hold fetched bytes. It ends in .part too, so
# whatever hides or sweeps partial downloads (the gateway never serves them) covers it.
PARTS_SUFFIX = ".parts" + PART_SUFFIX

_DEFAULT_EXT = {
    MediaKind.photo: ".jpg",
    MediaKind.video: ".mp4",
    MediaKind.audio: ".mp3",
    MediaKind.voice: ".ogg",
    MediaKind.document: ".bin",
}
_UNSAFE = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|#%]')  # also # and %: they break URLs
_EXT = re.compile(r"[A-Za-z0-9]{1,10}")
# Names Windows (and so SMB shares of the media folder) will not create, with any extension.
_RESERVED = re.compile(r"(?i)(con|prn|aux|nul|com[0-9¹²³]|lpt[0-9¹²³])(\..*)?")


def extension_for(mime_type: str | None, kind: MediaKind) -> str:
    if mime_type:
        ext = {"image/jpeg": ".jpg", "audio/ogg": ".ogg", "audio/mpeg": ".mp3"}.get(
            mime_type
        ) or mimetypes.guess_extension(mime_type, strict=False)
        if ext:
            return ext
    return _DEFAULT_EXT[kind]


def _clean(text: str) -> str:
    """Text safe inside one path segment: no separators, control or format characters
    (bidi overrides, zero-width joiners), no characters that break URLs; runs of blanks
    become one underscore."""
    text = unicodedata.normalize("NFC", text)
    text = _UNSAFE.sub("_", text)
    text = "".join(ch for ch in text if unicodedata.category(ch)[0] != "C")
    return re.sub(r"\s+", " ", text).strip().replace(" ", "_")


def _split_ext(text: str) -> tuple[str, str]:
    stem, dot, ext = text.rpartition(".")
    if not dot or not stem or not _EXT.fullmatch(ext):
        return text, ""
    return stem, f".{ext}"


def _fit(stem: str, suffix: str, limit: int = MAX_NAME_BYTES) -> str:
    """`stem` cut (by whole characters) so that stem + suffix fits in `limit` bytes."""
    budget = limit - len(suffix.encode())
    while len(stem.encode()) > budget:
        stem = stem[:-1]
    return f"{stem}{suffix}"


def safe_name(name: str | None, mime_type: str | None, kind: MediaKind) -> str:
    """A file name that cannot escape its folder or confuse a terminal."""
    text = unicodedata.normalize("NFC", name or "")
    text = _UNSAFE.sub("_", text)
    text = "".join(ch for ch in text if unicodedata.category(ch)[0] != "C")
    text = text.strip().strip(".").strip()
    text = re.sub(r"\s+", " ", text).replace(" ", "_")
    stem, ext = _split_ext(text)
    suffix = ext or extension_for(mime_type, kind)
    stem = stem or kind.value
    if _RESERVED.fullmatch(stem):
        stem = f"_{stem}"
    return _fit(stem, suffix)


def _safe_segment(text: str, last: bool) -> str:
    """One rendered path segment made safe as a whole: never empty, ``.`` or ``..``,
    never hidden, never a reserved name, never a partial download's name, bounded."""
    text = text.strip().lstrip(".").rstrip(". ") or "_"
    if _RESERVED.fullmatch(text):
        text = f"_{text}"
    if last and text.endswith(PART_SUFFIX):  # .part names are partial downloads
        text = f"{text[: -len(PART_SUFFIX)]}_part"
    stem, ext = _split_ext(text) if last else (text, "")
    return _fit(stem, ext, MAX_SEGMENT_BYTES)


# --- naming templates ---------------------------------------------------------------------

DEFAULT_NAME_TEMPLATE = "{kind}s/{message_id}_{telegram_message_id}_{name}"
MAX_TEMPLATE_CHARS = 300
MAX_SEGMENTS = 8
DEFAULT_CAPTION_CHARS = 40
MAX_CAPTION_CHARS = 120
DEFAULT_DATE_FORMAT = "%Y-%m-%d"

# What a template may use, and what each stands for.
PLACEHOLDERS = {
    "chat": "the chat's username or id (without @)",
    "kind": "photo, video, document, audio or voice",
    "date": f"the message's date (UTC), {{date:%Y-%m}} as strftime; default {DEFAULT_DATE_FORMAT}",
    "message_id": "the id used by the API (the file name must start with it)",
    "telegram_message_id": "the message's id inside its chat",
    "name": "the file name from Telegram, made safe, with its extension",
    "stem": "that name without its extension",
    "ext": "its extension, without the dot",
    "caption": f"the caption, {{caption:N}}: its first N characters (default "
               f"{DEFAULT_CAPTION_CHARS}, at most {MAX_CAPTION_CHARS})",
}
_SPEC_TAKERS = {"date", "caption"}
# Literal text takes what a safe file name may hold (values are cleaned, literals refused).
_FORBIDDEN_LITERAL = re.compile(r'[\x00-\x1f\x7f\\:*?"<>|#%\s]')


class TemplateError(ValueError):
    """A naming template that cannot be used; the message says why."""


@dataclass(frozen=True)
class _Field:
    name: str
    spec: str


Segment = tuple[str | _Field, ...]


@dataclass(frozen=True)
class NameTemplate:
    """A parsed, checked naming template; `render` gives a message's relative path."""

    text: str
    segments: tuple[Segment, ...]

    @staticmethod
    def parse(text: str) -> NameTemplate:
        return _parse(text)

    def render(self, entry: CatalogEntry) -> PurePosixPath:
        if entry.media_kind is None:
            raise ValueError(f"message {entry.message_id} has no media")
        values = _values(entry)
        parts = []
        for i, segment in enumerate(self.segments):
            text = "".join(p if isinstance(p, str) else _value(values, p) for p in segment)
            parts.append(_safe_segment(text, last=i == len(self.segments) - 1))
        return PurePosixPath(*parts)


@lru_cache(maxsize=64)
def _parse(text: str) -> NameTemplate:
    if not isinstance(text, str) or not text.strip():
        raise TemplateError("the naming template is empty")
    if len(text) > MAX_TEMPLATE_CHARS:
        raise TemplateError(f"the naming template is longer than {MAX_TEMPLATE_CHARS} characters")
    if text.startswith("/"):
        raise TemplateError("the naming template must be relative (it starts with /)")
    try:
        pieces = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise TemplateError(f"the naming template is malformed: {exc} (write {{{{ and }}}} "
                            "for literal braces)") from None
    segments: list[list[str | _Field]] = [[]]
    for literal, field, spec, conversion in pieces:
        if _FORBIDDEN_LITERAL.search(literal):
            raise TemplateError(
                "the naming template's text holds a blank, a control character or one of "
                '\\ : * ? " < > | # % (file names here never do; use _ or -)')
        for i, chunk in enumerate(literal.split("/")):
            if i:
                segments.append([])
            if chunk:
                segments[-1].append(chunk)
        if field is None:
            continue
        if field not in PLACEHOLDERS:
            raise TemplateError(f"unknown placeholder {{{field}}} in the naming template; "
                                f"known: {', '.join('{' + p + '}' for p in PLACEHOLDERS)}")
        if conversion:
            raise TemplateError(f"{{{field}!{conversion}}}: conversions are not supported")
        if spec and field not in _SPEC_TAKERS:
            raise TemplateError(f"{{{field}:{spec}}}: only {{date:...}} and {{caption:N}} "
                                "take a format")
        if field == "caption" and spec and not (
                spec.isdigit() and 1 <= int(spec) <= MAX_CAPTION_CHARS):
            raise TemplateError(f"{{caption:{spec}}}: N must be a number from 1 to "
                                f"{MAX_CAPTION_CHARS}")
        if field == "date" and spec:
            try:
                sample = datetime(2025, 12, 31, 23, 59, 58, tzinfo=UTC).strftime(spec)
            except ValueError as exc:
                raise TemplateError(f"{{date:{spec}}}: not a strftime format ({exc})") from None
            if not sample.strip():
                raise TemplateError(f"{{date:{spec}}} renders nothing")
        segments[-1].append(_Field(field, spec))
    if len(segments) > MAX_SEGMENTS:
        raise TemplateError(f"the naming template has more than {MAX_SEGMENTS} path segments")
    for segment in segments:
        if not segment:
            raise TemplateError("the naming template has an empty path segment (// or a "
                                "trailing /)")
        literal = "".join(p for p in segment if isinstance(p, str))
        if all(isinstance(p, str) for p in segment) and literal.strip(".") == "":
            raise TemplateError("the naming template has a . or .. segment")
        if isinstance(segment[0], str) and segment[0].startswith("."):
            raise TemplateError("a segment of the naming template starts with a dot "
                                "(hidden files are never served)")
    name = segments[-1]
    first = name[0]
    after = name[1] if len(name) > 1 else None
    if not (isinstance(first, _Field) and first.name == "message_id"):
        raise TemplateError(
            "the naming template's file name (after the last /) must start with "
            "{message_id}, e.g. {message_id}_{name}: the id keeps every message's path "
            "its own" + ("" if "{message_id}" in text else
                         " (the template has no {message_id})"))
    if after is not None and not (isinstance(after, str) and not after[0].isdigit()):
        raise TemplateError(
            "{message_id} must be followed by a separator that is not a digit, e.g. "
            "{message_id}_{name}: otherwise two ids could run into the same name")
    return NameTemplate(text, tuple(tuple(s) for s in segments))


def _values(entry: CatalogEntry) -> dict[str, object]:
    assert entry.media_kind is not None
    name = safe_name(entry.file_name, entry.mime_type, entry.media_kind)
    stem, ext = _split_ext(name)
    return {
        "chat": entry.chat.strip().removeprefix("@"),
        "kind": entry.media_kind.value,
        "date": entry.date,
        "message_id": entry.message_id,
        "telegram_message_id": entry.telegram_message_id,
        "name": name,
        "stem": stem,
        "ext": ext.removeprefix("."),
        "caption": entry.caption or "",
    }


def _value(values: dict[str, object], field: _Field) -> str:
    value = values[field.name]
    if field.name == "date":
        if not isinstance(value, datetime):
            return "undated"
        when = value.astimezone(UTC) if value.tzinfo else value
        return _clean(when.strftime(field.spec or DEFAULT_DATE_FORMAT))
    if field.name == "caption":
        limit = int(field.spec) if field.spec else DEFAULT_CAPTION_CHARS
        return _clean(" ".join(str(value).split())[:limit])
    return _clean(str(value))


def name_template(text: str | None) -> NameTemplate:
    """The template of a batch (None: one started before templates, the default)."""
    return _parse(text or DEFAULT_NAME_TEMPLATE)


def relative_path(entry: CatalogEntry, template: str | None = None) -> PurePosixPath:
    """Path of the finished file relative to the media root (also its URL path), as
    `template` (None: the default layout) names it."""
    return name_template(template).render(entry)


PathT = TypeVar("PathT", bound=PurePath)


def part_path(final: PathT) -> PathT:
    """Where the download of `final` writes its bytes until it is complete."""
    return final.with_name(final.name + PART_SUFFIX)


def parts_path(final: PathT) -> PathT:
    """The sidecar of `final`'s .part file: which of its parts are fetched."""
    return final.with_name(final.name + PARTS_SUFFIX)


_LEADING_ID = re.compile(r"([0-9]+)[^0-9]")


def message_id_of(file_name: str) -> int | None:
    """The message a media file belongs to: every template starts its file names with
    the message id and a separator that is not a digit (None: not such a name)."""
    match = _LEADING_ID.match(file_name)
    if match is None or len(match[1]) > 19 or int(match[1]) > 2**63 - 1:
        return None
    return int(match[1])


def download_url(relative: PurePosixPath | str) -> str:
    return f"/media/{relative}"
