"""The simulated Telegram's catalog, content formula, settings and fault bodies."""

from __future__ import annotations

import hashlib
import mimetypes
import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from tgdl.contracts.catalog import CatalogEntry, MediaKind
from tgdl.contracts.paths import relative_path
from tgdl.simtelegram import content
from tgdl.simtelegram.catalog import DEMO_CHAT, PRIVATE_CHAT, demo_catalog
from tgdl.simtelegram.faults import FaultRequest, Faults
from tgdl.simtelegram.settings import SimSettings

MiB = 2**20


# --- catalog -------------------------------------------------------------------------------


def test_catalog_is_the_same_for_the_same_arguments() -> None:
    assert demo_catalog() == demo_catalog()
    assert demo_catalog(count=50, seed=7) == demo_catalog(count=50, seed=7)
    assert demo_catalog(seed=2) != demo_catalog(seed=1)


def _catalog_digest_in_new_process(hash_seed: str) -> str:
    code = (
        "import hashlib; from tgdl.simtelegram.catalog import demo_catalog;"
        "print(hashlib.sha256(repr(demo_catalog()).encode()).hexdigest())"
    )
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_catalog_is_the_same_in_every_process() -> None:
    here = hashlib.sha256(repr(demo_catalog()).encode()).hexdigest()
    assert _catalog_digest_in_new_process("1") == here
    assert _catalog_digest_in_new_process("4242") == here


def test_default_catalog_has_every_kind_within_bounds() -> None:
    messages = demo_catalog()
    assert [m.message_id for m in messages] == list(range(1, 241))
    assert {m.media_kind for m in messages} == {*MediaKind, None}
    for m in messages:
        assert m.telegram_message_id == 1000 + m.message_id
        if m.media_kind is None:
            assert m.size is None and m.file_name is None and m.mime_type is None
        else:
            assert m.size is not None and 10_000 <= m.size <= 200 * MiB
            assert m.mime_type and "/" in m.mime_type
    without_media = sum(m.media_kind is None for m in messages)
    assert 0.02 * len(messages) <= without_media <= 0.08 * len(messages)


def test_photos_are_small_and_videos_big() -> None:
    def median(kind: MediaKind) -> int:
        sizes = sorted(m.size or 0 for m in demo_catalog() if m.media_kind is kind)
        return sizes[len(sizes) // 2]

    assert median(MediaKind.photo) * 20 < median(MediaKind.video)
    sizes = [m.size for m in demo_catalog() if m.size]
    assert min(sizes) < 50_000 and max(sizes) > 100 * MiB  # spread over the whole range


def test_file_names_match_their_mime_types() -> None:
    builtin = mimetypes.MimeTypes()  # Python's own table, whatever other modules registered
    for m in demo_catalog():
        if m.file_name is None:
            continue
        guessed, encoding = builtin.guess_type(m.file_name, strict=False)
        if guessed is not None and encoding is None:
            assert guessed == m.mime_type, m
        assert relative_path(m.to_entry()).name.startswith(f"{m.message_id}_")


def test_a_few_messages_are_deleted_or_forbidden() -> None:
    messages = demo_catalog()
    deleted = [m for m in messages if m.deleted]
    forbidden = [m for m in messages if m.forbidden]
    assert len(deleted) == 2 and len(forbidden) == 2
    assert all(m.media_kind is not None for m in deleted + forbidden)
    assert {m.chat for m in forbidden} == {PRIVATE_CHAT}
    assert {m.chat for m in messages if not m.forbidden} == {DEMO_CHAT}


def test_to_entry_is_the_catalog_row_a_sync_would_see() -> None:
    message = next(m for m in demo_catalog() if m.deleted)
    entry = message.to_entry()
    assert isinstance(entry, CatalogEntry)
    assert entry.model_dump() == {
        "message_id": message.message_id,
        "chat": message.chat,
        "telegram_message_id": message.telegram_message_id,
        "media_kind": message.media_kind,
        "file_name": message.file_name,
        "mime_type": message.mime_type,
        "size": message.size,
        "date": message.date,
        "caption": message.caption,
        # the simulated Telegram serves a file by its message: no reference, no hash
        "location": {"kind": "photo" if message.media_kind is MediaKind.photo else "document",
                     "id": message.file_id, "access_hash": 0, "file_reference": "",
                     "dc_id": message.dc_id, "size": message.size, "thumb_size": ""},
        "grouped_id": None,  # the simulated Telegram posts no albums
    }


def test_small_catalogs_respect_their_bounds() -> None:
    messages = demo_catalog(count=12, min_size=1000, max_size=5000, seed=3)
    assert [m.message_id for m in messages] == list(range(1, 13))
    assert all(1000 <= m.size <= 5000 for m in messages if m.size is not None)
    assert len(demo_catalog(count=1)) == 1


@pytest.mark.parametrize(
    ("count", "min_size", "max_size"), [(0, 10, 20), (5, 0, 20), (5, 30, 20)]
)
def test_catalog_rejects_impossible_arguments(count: int, min_size: int, max_size: int) -> None:
    with pytest.raises(ValueError):
        demo_catalog(count=count, min_size=min_size, max_size=max_size)


# --- content -------------------------------------------------------------------------------


def test_chunk_follows_the_formula() -> None:
    expected = hashlib.shake_256(b"tgdl-sim:7:3").digest(MiB)
    assert content.chunk(7, 3) == expected
    assert len(content.chunk(7, 0)) == MiB
    assert content.chunk(7, 0) != content.chunk(8, 0) != content.chunk(7, 1)
    assert content.chunk(7, 3, 1000) == expected[:1000]  # a small file's chunk is a prefix


def test_read_across_a_chunk_boundary() -> None:
    size = 3 * MiB
    data = content.read(5, size, MiB - 100, 300)
    assert data == content.chunk(5, 0)[-100:] + content.chunk(5, 1)[:200]


def test_read_is_cut_at_the_size() -> None:
    size = MiB + 1234
    assert content.read(5, size, 0, size + 999) == content.chunk(5, 0) + content.chunk(5, 1)[:1234]
    assert content.read(5, size, size - 10, 100) == content.chunk(5, 1)[1224:1234]
    assert content.read(5, size, size, 100) == b""
    assert content.read(5, size, size + 50, 100) == b""
    with pytest.raises(ValueError):
        content.read(5, size, -1, 10)


def test_expected_sha256_is_the_hash_of_the_whole_content() -> None:
    size = 2 * MiB + 777
    whole = content.read(9, size, 0, size)
    assert content.expected_sha256(9, size) == hashlib.sha256(whole).hexdigest()
    assert content.expected_sha256(9, 0) == hashlib.sha256(b"").hexdigest()


# --- settings ------------------------------------------------------------------------------


def test_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("TGDL_SIM_"):
            monkeypatch.delenv(name)
    settings = SimSettings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8100)
    assert (settings.bandwidth, settings.latency) == (4_000_000, 0.05)
    assert (settings.count, settings.min_size, settings.max_size, settings.seed) == (
        240, 10_000, 200 * MiB, 1
    )
    assert settings.base_url == "http://127.0.0.1:8100"


def test_settings_come_from_tgdl_sim_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TGDL_SIM_PORT", "9001")
    monkeypatch.setenv("TGDL_SIM_BANDWIDTH", "0")
    monkeypatch.setenv("TGDL_SIM_LATENCY", "0.2")
    monkeypatch.setenv("TGDL_SIM_COUNT", "30")
    monkeypatch.setenv("TGDL_SIM_HOST", "0.0.0.0")
    monkeypatch.setenv("TGDL_SIM_SOMETHING_ELSE", "ignored")
    monkeypatch.setenv("TGDL_PORT", "1")  # another service's variable
    settings = SimSettings()
    assert (settings.port, settings.bandwidth, settings.latency, settings.count) == (
        9001, 0, 0.2, 30
    )
    assert settings.base_url == "http://127.0.0.1:9001"  # a wildcard host is reached locally


@pytest.mark.parametrize(
    "bad",
    [
        {"bandwidth": -1},
        {"latency": -0.1},
        {"latency": 3600},
        {"port": 70000},
        {"count": 0},
        {"min_size": 0},
        {"min_size": 5000, "max_size": 4000},
        {"max_size": 5 * 2**30},
        {"host": ""},
    ],
)
def test_settings_reject_unsafe_values(bad: dict) -> None:
    with pytest.raises(ValidationError):
        SimSettings(**bad)


# --- fault bodies --------------------------------------------------------------------------


def test_faults_are_consumed_one_request_at_a_time() -> None:
    faults = Faults()
    faults.add(
        FaultRequest.model_validate(
            {
                "flood_wait": {"message_id": 3, "seconds": 5, "times": 2},
                "drop": [{"message_id": 3, "after_bytes": 10}, {"message_id": 4, "after_bytes": 0}],
                "delete": [6],
                "bandwidth": 0,
            }
        )
    )
    assert [faults.take_flood_wait(3) for _ in range(3)] == [5, 5, None]
    assert [faults.take_drop(3), faults.take_drop(3), faults.take_drop(4)] == [10, None, 0]
    assert faults.take_flood_wait(4) is None
    assert faults.deleted == {6} and faults.bandwidth == 0
    faults.clear()
    assert faults.describe()["deleted"] == [] and faults.bandwidth is None


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"flood_wait": {"message_id": 3}},
        {"flood_wait": {"message_id": 3, "seconds": 0}},
        {"drop": {"message_id": 3, "after_bytes": -1}},
        {"drop": {"message_id": 3, "after_bytes": 1, "times": 0}},
        {"bandwidth": -5},
        {"delete": "all"},
        {"explode": True},
    ],
)
def test_fault_request_rejects_bad_bodies(body: dict) -> None:
    with pytest.raises(ValidationError):
        FaultRequest.model_validate(body)


def test_forwards_carry_an_earlier_messages_file():
    plain = demo_catalog(count=60)
    messages = demo_catalog(count=60, forwards=6)
    assert messages[:60] == plain  # the first `count` messages do not change
    assert all(m.file_id == m.message_id for m in plain)
    forwards = messages[60:]
    assert [m.message_id for m in forwards] == list(range(61, 67))
    by_id = {m.message_id: m for m in plain}
    for m in forwards:
        source = by_id[m.file_id]
        assert not source.deleted and not source.forbidden and source.media_kind is not None
        assert (m.media_kind, m.size, m.file_name, m.mime_type) == (
            source.media_kind, source.size, source.file_name, source.mime_type)
        assert m.location().id == source.location().id == source.message_id
        assert m.telegram_message_id == 1000 + m.message_id
    assert forwards[0].file_id == forwards[1].file_id  # one file in three messages
    assert {m.chat for m in forwards} == {DEMO_CHAT, "sim_forwards"}
    assert SimSettings().forwards > 0  # the demo catalog has some
