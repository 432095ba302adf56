"""Watch rules: which messages a rule starts, what bad input is refused, and the start
command a rule sends."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from tgdl.catalog.watcher import start_command
from tgdl.contracts.catalog import CatalogEntry, MediaKind
from tgdl.contracts.rules import RuleCreate, RuleFilter, WatchRule
from tgdl.db.rules import Start


def entry(kind: MediaKind | None = MediaKind.video, size: int | None = 5_000_000,
          caption: str | None = None) -> CatalogEntry:
    return CatalogEntry(message_id=7, chat="news", telegram_message_id=1007, media_kind=kind,
                        size=size, caption=caption)


@pytest.mark.parametrize(("rule", "message", "matches"), [
    ({}, entry(), True),
    ({}, entry(kind=None, size=None), False),  # text: nothing to download
    ({"media_types": ["video", "document"]}, entry(MediaKind.document), True),
    ({"media_types": ["video", "document"]}, entry(MediaKind.photo), False),
    ({"min_size": 5_000_000}, entry(size=5_000_000), True),  # inclusive
    ({"min_size": 5_000_001}, entry(size=5_000_000), False),
    ({"max_size": 5_000_000}, entry(size=5_000_000), True),
    ({"max_size": 4_999_999}, entry(size=5_000_000), False),
    ({"min_size": 1}, entry(size=None), False),  # an unknown size never passes a bound
    ({"caption_regex": r"^keep\b"}, entry(caption="keep this"), True),
    ({"caption_regex": r"^keep\b"}, entry(caption="do not keep"), False),
    ({"caption_regex": r"^keep\b"}, entry(caption=None), False),
    ({"caption_regex": r"^$"}, entry(caption=None), True),  # no caption is an empty one
    ({"caption_regex": r"(?i)REPORT"}, entry(caption="the report"), True),
    ({"caption_regex": "REPORT"}, entry(caption="the report"), False),  # case counts
    ({"media_types": ["video"], "min_size": 1_000_000, "caption_regex": "x"},
     entry(caption="x"), True),
    ({"media_types": ["video"], "min_size": 1_000_000, "caption_regex": "x"},
     entry(size=10, caption="x"), False),
])
def test_a_rule_matches_media_of_its_types_sizes_and_caption(rule, message, matches):
    assert RuleFilter(chat="news", **rule).matches(message) is matches


@pytest.mark.parametrize(("body", "says"), [
    ({"caption_regex": "(unclosed"}, "not a valid regular expression"),
    ({"caption_regex": r"(a)\1"}, "without backreferences"),  # RE2 has none
    ({"min_size": 10, "max_size": 5}, "min_size must not exceed max_size"),
    ({"media_types": ["sticker"]}, "media_types"),
    ({"min_size": -1}, "min_size"),
    ({"chat": "two words"}, "without spaces"),
    ({"chat": ""}, "chat"),
    ({"max_concurrent": 6}, "max_concurrent"),
    ({"name_template": ""}, "name_template"),
    ({"name_template": "{chat}/{name}"}, "message_id"),  # two messages could share a path
    ({"surprise": 1}, "surprise"),
])
def test_bad_rules_are_refused_with_what_is_wrong(body, says):
    with pytest.raises(ValidationError) as raised:
        RuleCreate.model_validate({"chat": "news", **body})
    assert says in str(raised.value)


@pytest.mark.timeout(10)
def test_a_catastrophic_caption_pattern_matches_in_linear_time():
    """Python's `re` backtracks for about 2**40 steps on this pattern and caption (hours);
    RE2 answers at once, so the test's timeout is only a guard."""
    rule = RuleFilter(chat="news", caption_regex=r"^(a+)+$")
    assert rule.matches(entry(caption="a" * 40 + "b")) is False
    assert rule.matches(entry(caption="a" * 4000)) is True


def test_duplicate_media_types_collapse():
    assert RuleCreate(chat="@news", media_types=["video", "video"]).media_types == [
        MediaKind.video]


def test_a_rules_start_carries_its_id_its_batch_id_and_its_chat_only():
    rule = WatchRule(rule_id="rule_0000abcd", chat="@News", max_concurrent=2,
                     created_at=datetime(2026, 1, 1, tzinfo=UTC))
    cmd = start_command(Start(rule, "batch_1234abcd", [5, 6]))
    assert (cmd.rule_id, cmd.batch_id, cmd.message_ids) == ("rule_0000abcd", "batch_1234abcd",
                                                            [5, 6])
    assert (cmd.max_concurrent, cmd.chats, cmd.force) == (2, ["news"], False)
