"""Where files go and how names from Telegram are made safe."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest

from tgdl.contracts.catalog import CatalogEntry, MediaKind
from tgdl.contracts.paths import (
    MAX_NAME_BYTES,
    download_url,
    message_id_of,
    relative_path,
    safe_name,
)


def entry(name: str | None, kind=MediaKind.document, mime: str | None = None) -> CatalogEntry:
    return CatalogEntry(message_id=7, chat="c", telegram_message_id=123, media_kind=kind,
                        file_name=name, mime_type=mime, size=1)


def test_layout_follows_kind_ids_and_name():
    assert relative_path(entry("abc.jpg", MediaKind.photo)) == PurePosixPath(
        "photos/7_123_abc.jpg")
    assert download_url(relative_path(entry("a b.pdf"))) == "/media/documents/7_123_a_b.pdf"


@pytest.mark.parametrize("hostile", [
    "../../etc/passwd", "..", "/abs/path.txt", "a\\b.txt", "evil\x00name.txt",
    "line\nbreak.txt", "\x1b[31mred.txt", "report #1 (100%).pdf", "con:colon?.txt",
])
def test_hostile_names_cannot_escape_or_break_urls(hostile: str):
    name = safe_name(hostile, None, MediaKind.document)
    assert "/" not in name and "\\" not in name and name not in ("", ".", "..")
    assert not name.startswith(".")
    assert all(ch.isprintable() for ch in name)
    assert "#" not in name and "%" not in name
    rel = relative_path(entry(hostile))
    assert rel.parent == PurePosixPath("documents")


def test_long_names_are_bounded_and_keep_their_extension():
    name = safe_name("ж" * 400 + ".mkv", None, MediaKind.video)
    assert len(name.encode()) <= MAX_NAME_BYTES and name.endswith(".mkv")


def test_missing_extension_comes_from_mime_type_or_kind():
    assert safe_name("clip", "video/mp4", MediaKind.video) == "clip.mp4"
    assert safe_name(None, "audio/ogg", MediaKind.voice) == "voice.ogg"
    assert safe_name(None, None, MediaKind.photo) == "photo.jpg"
    assert safe_name("archive.tar.gz", None, MediaKind.document) == "archive.tar.gz"


def test_no_media_has_no_path():
    with pytest.raises(ValueError):
        relative_path(entry("x", kind=None))


@pytest.mark.parametrize(("name", "message_id"), [
    ("12_901_photo.jpg", 12), ("12-photo.jpg", 12), ("12.jpg", 12), ("7 x.bin", 7),
    ("photo_12.jpg", None), ("12", None), ("x.jpg", None), ("", None),
    (f"{2**63}_a.jpg", None), (f"{'9' * 30}_a.jpg", None)])
def test_a_media_file_name_says_its_message_whatever_the_template(name, message_id):
    assert message_id_of(name) == message_id
    # ... and every file a template names says it back
    entry = CatalogEntry(message_id=42, chat="c", telegram_message_id=9,
                         media_kind=MediaKind.photo, file_name="a.jpg", size=1)
    for template in ("{message_id}_{name}", "{chat}/{message_id}-{stem}.{ext}",
                     "{message_id}.{ext}"):
        assert message_id_of(relative_path(entry, template).name) == 42
