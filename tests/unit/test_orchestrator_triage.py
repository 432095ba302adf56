"""Which requested ids start, which are already there, which are refused and why."""

from __future__ import annotations

from pathlib import Path

from tgdl.contracts.catalog import CatalogEntry, MediaKind
from tgdl.contracts.errors import ErrorCode
from tgdl.orchestrator.triage import triage_request

ROOT = Path("/media")
CATALOG = {
    1: CatalogEntry(message_id=1, chat="pub", telegram_message_id=11, media_kind=MediaKind.photo,
                    file_name="a.jpg", size=100),
    2: CatalogEntry(message_id=2, chat="pub", telegram_message_id=12, media_kind=None),
    3: CatalogEntry(message_id=3, chat="secret", telegram_message_id=13,
                    media_kind=MediaKind.video, file_name="v.mp4", size=500),
    4: CatalogEntry(message_id=4, chat="pub", telegram_message_id=14,
                    media_kind=MediaKind.document, file_name="d.pdf", size=300),
}


def test_each_case_is_told_apart():
    c = triage_request([1, 2, 3, 4, 99], CATALOG, sizes_on_disk={1: 100, 4: 299},
                       media_root=ROOT, force=False, allowed_chats={"pub"}, leased={4})
    assert [e.message_id for e in c.to_download] == [4]  # 299 bytes on disk: incomplete
    assert [(d.message_id, d.file_path) for d in c.already_downloaded] == [
        (1, "/media/photos/1_11_a.jpg")]
    assert {f.message_id: f.error for f in c.failed_to_start} == {
        2: ErrorCode.no_media, 3: ErrorCode.access_denied, 99: ErrorCode.message_not_found}
    assert all(f.suggestion for f in c.failed_to_start)
    assert c.already_downloading == [4]


def test_force_downloads_again_and_no_allow_list_means_every_chat():
    c = triage_request([1, 3], CATALOG, sizes_on_disk={1: 100}, media_root=ROOT,
                       force=True, allowed_chats=None, leased=set())
    assert [e.message_id for e in c.to_download] == [1, 3]
    assert c.already_downloaded == [] and c.failed_to_start == []
