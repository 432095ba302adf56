"""Naming templates: every rendered segment is a safe name, and no two messages can share
a path, whatever Telegram sends as names, captions or chats."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import PurePosixPath

import pytest
from pydantic import ValidationError

from tgdl.contracts.api import BatchDownloadRequest
from tgdl.contracts.catalog import CatalogEntry, MediaKind
from tgdl.contracts.commands import StartBatch
from tgdl.contracts.config import CommonSettings
from tgdl.contracts.paths import (
    DEFAULT_NAME_TEMPLATE,
    MAX_SEGMENT_BYTES,
    NameTemplate,
    TemplateError,
    relative_path,
)

WHEN = datetime(2025, 3, 4, 22, 30, tzinfo=UTC)
RICH = "{chat}/{kind}s/{date:%Y-%m}/{message_id}_{caption:40}_{name}"


def entry(message_id: int = 7, *, name: str | None = "clip.mp4", caption: str | None = "hi",
          chat: str = "@Chan", kind: MediaKind = MediaKind.video,
          date: datetime | None = WHEN, mime: str | None = "video/mp4") -> CatalogEntry:
    return CatalogEntry(message_id=message_id, chat=chat, telegram_message_id=1000 + message_id,
                        media_kind=kind, file_name=name, mime_type=mime, size=10, date=date,
                        caption=caption)


def render(template: str, e: CatalogEntry) -> PurePosixPath:
    return NameTemplate.parse(template).render(e)


def assert_safe(path: PurePosixPath) -> None:
    assert not path.is_absolute()
    for part in path.parts:
        assert part not in ("", ".", "..") and not part.startswith(".")
        assert "\\" not in part and "\x00" not in part
        assert all(ch.isprintable() for ch in part), part
        assert len(part.encode()) <= MAX_SEGMENT_BYTES
        assert part.split(".")[0].lower() not in ("con", "nul", "aux", "prn", "com1", "lpt1")
    assert not path.name.endswith(".part")


def test_the_default_keeps_the_layout_files_already_have():
    assert DEFAULT_NAME_TEMPLATE == "{kind}s/{message_id}_{telegram_message_id}_{name}"
    assert relative_path(entry()) == PurePosixPath("videos/7_1007_clip.mp4")
    assert relative_path(entry(), None) == relative_path(entry(), DEFAULT_NAME_TEMPLATE)


def test_every_placeholder_renders():
    e = entry(caption="Trip to the Alps, day 2", name="IMG 1.JPG", kind=MediaKind.photo,
              mime="image/jpeg")
    assert render(RICH, e) == PurePosixPath(
        "Chan/photos/2025-03/7_Trip_to_the_Alps,_day_2_IMG_1.JPG")
    assert render("{date}/{message_id}-{telegram_message_id}-{stem}.{ext}", e) == \
        PurePosixPath("2025-03-04/7-1007-IMG_1.JPG")
    assert render("{kind}/{message_id}_{caption:4}", e) == PurePosixPath("photo/7_Trip")


def test_dates_are_utc_and_missing_dates_say_so():
    late = entry(date=datetime(2025, 3, 4, 23, 30, tzinfo=timezone(timedelta(hours=-2))))
    assert render("{date:%Y-%m-%d_%H}/{message_id}", late).parts[0] == "2025-03-05_01"
    assert render("{date:%Y}/{date:%m}/{message_id}", entry()).parts[:2] == ("2025", "03")
    assert render("{date}/{message_id}", entry(date=None)).parts[0] == "undated"
    # a format that writes a separator stays inside its segment
    assert render("{date:%Y/%m}/{message_id}", entry()).parts[0] == "2025_03"


@pytest.mark.parametrize("hostile", [
    "../../etc/passwd", "..", ".", "/", "/abs/path", "a\\b", "evil\x00name", "line\nbreak",
    "\x1b[31mred", "\u202egnp.exe", "zero\u200bwidth", "\uff23\uff2f\uff2e", "CON",
    "nul.txt", "lpt1",
    "x.part", ".hidden", "  ", "", "..\\..\\windows", "%2e%2e%2f", "a#b?c", "ж" * 10_000,
    "🎉" * 3000, "\ud7ff\ufeff", "..." * 500,
])
@pytest.mark.parametrize("template", [DEFAULT_NAME_TEMPLATE, RICH,
                                      "{chat}/{caption}/{message_id}_{stem}.{ext}",
                                      "{caption:120}/{message_id}"])
def test_hostile_values_stay_inside_their_segment(hostile: str, template: str):
    e = entry(name=hostile, caption=hostile, chat=hostile or "c")
    path = render(template, e)
    assert_safe(path)
    assert len(path.parts) == len(NameTemplate.parse(template).segments)
    assert path.name.startswith("7")
    assert not path.name[1:2].isdigit()


def test_empty_values_never_make_an_empty_or_hidden_segment():
    e = entry(caption=None, name=None, chat="..")
    path = render("{chat}/{caption}/{message_id}_{caption}", e)
    assert path == PurePosixPath("_/_/7_")
    assert_safe(path)


def test_ten_thousand_character_captions_are_cut_to_their_limit():
    path = render("{message_id}_{caption:40}_{name}", entry(caption="x" * 10_000))
    assert path.name == f"7_{'x' * 40}_clip.mp4"
    long_name = render("{message_id}_{caption:120}_{name}", entry(caption="é" * 10_000,
                                                                   name="n" * 400 + ".mp4"))
    assert len(long_name.name.encode()) <= MAX_SEGMENT_BYTES
    assert long_name.name.startswith("7_é") and long_name.name.endswith(".mp4")


def test_no_two_messages_share_a_path():
    templates = [DEFAULT_NAME_TEMPLATE, RICH, "{message_id}", "{chat}/{message_id}.{ext}",
                 "{caption}/{message_id}-{caption}"]
    # ids that run into each other, captions that mimic ids and separators
    entries = [entry(m, caption=c, name=n) for m in (1, 11, 12, 112, 2)
               for c in ("", "1", "2_x", "1_1", None) for n in ("1.mp4", "2_1.mp4", None)]
    for template in templates:
        paths: dict[PurePosixPath, int] = {}
        for e in entries:
            path = render(template, e)
            assert paths.setdefault(path, e.message_id) == e.message_id, (template, path)


@pytest.mark.parametrize(("template", "says"), [
    ("{kind}s/{name}", "no {message_id}"),
    ("{name}_{message_id}", "must start with {message_id}"),
    ("{message_id}/{name}", "must start with {message_id}"),
    ("{message_id}{name}", "not a digit"),
    ("{message_id}1_{name}", "not a digit"),
    ("../{message_id}_x", ". or .."),
    ("a/./{message_id}", ". or .."),
    ("/srv/{message_id}", "relative"),
    ("a//{message_id}", "empty path segment"),
    ("a/{message_id}/", "empty path segment"),
    (".cache/{message_id}", "starts with a dot"),
    ("a\\b/{message_id}", "\\"),
    ("a\x00/{message_id}", "control character"),
    ("my files/{message_id}", "blank"),
    ("{nope}/{message_id}", "unknown placeholder {nope}"),
    ("{0}/{message_id}", "unknown placeholder {0}"),
    ("{chat.__class__}/{message_id}", "unknown placeholder"),
    ("{message_id!r}_x", "conversions"),
    ("{kind:>9}/{message_id}", "take a format"),
    ("{caption:0}/{message_id}", "from 1 to"),
    ("{caption:x}/{message_id}", "from 1 to"),
    ("{message_id", "malformed"),
    ("", "empty"),
    ("x/" * 9 + "{message_id}", "segments"),
    ("x/" * 8 + "{message_id}", "more than 8 path segments"),
    ("a" * 288 + "/{message_id}", "longer than 300 characters"),
    ("{caption:121}/{message_id}", "from 1 to 120"),
    ("{date: }/{message_id}", "renders nothing"),
])
def test_unusable_templates_are_refused_saying_why(template: str, says: str):
    with pytest.raises(TemplateError) as refused:
        NameTemplate.parse(template)
    assert says in str(refused.value)


def test_templates_at_their_limits_are_taken():
    for template in ("x/" * 7 + "{message_id}",  # 8 segments
                     "a" * 287 + "/{message_id}",  # 300 characters
                     "{caption:120}/{date:%Y}/{message_id}", "{caption:1}/{message_id}"):
        NameTemplate.parse(template)
    assert len("a" * 287 + "/{message_id}") == 300


def test_the_start_request_refuses_a_template_naming_the_problem():
    with pytest.raises(ValidationError) as refused:
        BatchDownloadRequest(message_ids=[1], name_template="{chat}/{name}")
    assert "name_template" in str(refused.value) and "{message_id}" in str(refused.value)
    ok = BatchDownloadRequest(message_ids=[1], name_template=RICH)
    assert ok.command() == StartBatch(message_ids=[1], name_template=RICH)
    assert StartBatch(message_ids=[1]).name_template is None


def test_the_setting_is_checked_when_a_service_starts(monkeypatch):
    monkeypatch.setenv("TGDL_NAME_TEMPLATE", "{chat}/{name}")
    with pytest.raises(ValidationError) as refused:
        CommonSettings()
    assert "name_template" in str(refused.value) and "{message_id}" in str(refused.value)
    monkeypatch.setenv("TGDL_NAME_TEMPLATE", RICH)
    assert CommonSettings().name_template == RICH


# --- a batch keeps the template it started with --------------------------------------------


def test_a_batch_fixes_its_template_at_start_and_every_job_carries_it():
    from tgdl.contracts.events import BatchStarted, PermitGranted
    from tgdl.orchestrator.batch import Start, decide, fold, initial_state
    from tgdl.orchestrator.react import Dispatch, react_all, resume

    e1, e2 = entry(1), entry(2)
    events = decide(Start(batch_id="b", kind="batch", max_concurrent=1, force=False,
                          requested_ids=[1, 2], to_download=[e1, e2], already_downloaded=[],
                          failed_to_start=[], already_downloading=[], at=WHEN,
                          name_template=RICH), initial_state)
    started = events[0]
    assert isinstance(started, BatchStarted) and started.name_template == RICH
    # replayed from the log (a restart): the template comes back with the batch
    replayed = BatchStarted.model_validate_json(started.model_dump_json())
    state = fold([replayed, *events[1:]])
    assert state.name_template == RICH
    dispatches = [x for x in react_all(events, state) if isinstance(x, Dispatch)]
    assert [d.name_template for d in dispatches] == [RICH]
    assert isinstance(events[1], PermitGranted)
    # a crash between grant and dispatch: recovery dispatches with the same template
    assert {d.name_template for d in resume(state, WHEN) if isinstance(d, Dispatch)} == {RICH}
    # a log written before templates existed reads as the default layout
    old = started.model_dump(mode="json")
    del old["name_template"]
    assert BatchStarted.model_validate(old).name_template is None


def test_already_downloaded_is_decided_at_the_templates_path():
    from pathlib import Path

    from tgdl.orchestrator.triage import triage_request

    e = entry(1)
    c = triage_request([1], {1: e}, sizes_on_disk={1: 10}, media_root=Path("/m"), force=False,
                       allowed_chats=None, leased=[], name_template=RICH)
    [done] = c.already_downloaded
    assert done.relative_path == str(render(RICH, e))
    assert done.file_path == f"/m/{render(RICH, e)}"
