"""The allow-list compares chats by id or case-insensitive username, wherever it applies."""

from __future__ import annotations

from pathlib import Path

from tgdl.contracts.catalog import CatalogEntry, MediaKind
from tgdl.contracts.config import CommonSettings
from tgdl.contracts.errors import ErrorCode
from tgdl.orchestrator.triage import triage_request


def entry(m: int, chat: str) -> CatalogEntry:
    return CatalogEntry(message_id=m, chat=chat, telegram_message_id=m,
                        media_kind=MediaKind.photo, file_name="p.jpg", size=10)


def test_usernames_match_in_any_case_and_with_or_without_the_at():
    s = CommonSettings(allowed_chats=" @MyChannel, -1001234 ")
    assert s.chat_allowed("mychannel") and s.chat_allowed("MYCHANNEL")
    assert s.chat_allowed("@mychannel") and s.chat_allowed("-1001234")
    assert not s.chat_allowed("otherchannel") and not s.chat_allowed("1234")
    assert CommonSettings().chat_allowed("anything")  # no list: every chat


def test_a_start_refuses_only_chats_outside_the_list():
    catalog = {1: entry(1, "mychannel"), 2: entry(2, "Other")}
    allowed = CommonSettings(allowed_chats="@MyChannel").allowed_chat_set
    c = triage_request([1, 2], catalog, sizes_on_disk={}, media_root=Path("/m"), force=False,
                       allowed_chats=allowed, leased=set())
    assert [e.message_id for e in c.to_download] == [1]
    assert [(f.message_id, f.error) for f in c.failed_to_start] == [
        (2, ErrorCode.access_denied)]
