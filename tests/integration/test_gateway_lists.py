"""The message list's server-side filters and the batch list, on real PostgreSQL and NATS
(no orchestrator: batches are put in the read model by the projector's own fold)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tgdl.contracts.catalog import CatalogEntry, MediaKind
from tgdl.contracts.events import (
    BatchCancelled,
    BatchFinished,
    BatchStarted,
    FileCompleted,
    JobDispatched,
    PermitGranted,
)
from tgdl.contracts.jobs import DownloadProgress
from tgdl.db import catalog
from tgdl.gateway.settings import GatewaySettings
from tgdl.projector.fold import fold_event, fold_progress
from tgdl.projector.sql import apply_changes

DAY = datetime(2025, 1, 10, 12, 0, tzinfo=UTC)
K = MediaKind


@pytest.fixture
def settings(servers, isolation) -> GatewaySettings:
    return GatewaySettings(
        nats_url=servers.nats_url, database_url=servers.database_url,
        namespace=isolation.namespace, db_schema=isolation.schema,
        media_root=isolation.media_root, command_timeout=2.0, projection_wait=0.3,
        max_batch_ids=7,
    )


def msg(m: int, chat: str, kind: MediaKind | None, size: int | None, days: int,
        name: str | None = None, caption: str | None = None) -> CatalogEntry:
    return CatalogEntry(message_id=m, chat=chat, telegram_message_id=100 + m, media_kind=kind,
                        file_name=name, size=size, date=DAY + timedelta(days=days),
                        caption=caption)


CATALOG = [
    msg(1, "news", K.video, 50_000_000, 0, "Launch_Day.mp4", "The rocket launch"),
    msg(2, "news", K.photo, 2_000_000, 1, "IMG_1.jpg", "harbour at dawn"),
    msg(3, "news", None, None, 2, caption="just text"),
    msg(4, "pets", K.photo, 800_000, 3, "cat.jpg", "A CAT asleep"),
    msg(5, "pets", K.video, 9_000_000, 4, "cat_video.mp4", None),
    msg(6, "pets", K.document, 100_000, 5, "100%_done.pdf", "report"),
    msg(7, "work", K.audio, 5_000_000, 6, "call.mp3", "launch meeting"),
]


async def ids(client: httpx.AsyncClient, query: str) -> list[int]:
    response = await client.get(f"/api/messages?limit=200&{query}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["total"] == len(body["items"])
    return [i["message_id"] for i in body["items"]]


@pytest.mark.parametrize(("query", "expected"), [
    ("", [1, 2, 3, 4, 5, 6, 7]),
    ("chat=pets", [4, 5, 6]),
    ("chat=%40Pets", [4, 5, 6]),  # a username as people write it
    ("media_type=video", [1, 5]),
    ("media_type=photo,%20VIDEO", [1, 2, 4, 5]),  # several, any case, spaces allowed
    ("min_size=2000000", [1, 2, 5, 7]),
    ("max_size=800000", [4, 6]),
    ("min_size=1000000&max_size=9000000", [2, 5, 7]),
    ("since=2025-01-13", [4, 5, 6, 7]),  # a bare date: from its start
    ("until=2025-01-11", [1, 2]),  # a bare date: its whole day included
    ("since=2025-01-11T12:00:00Z&until=2025-01-13T12:00:00%2B00:00", [2, 3]),
    ("q=launch", [1, 7]),  # in the file name or the caption
    ("q=CAT", [4, 5]),  # case-insensitive
    ("q=100%25", [6]),  # LIKE's wildcards are matched literally
    ("q=l_unch", []),
    ("q=h_d", [1]),
    ("chat=pets&media_type=photo,document&q=P", [4, 6]),
    ("media_only=true&chat=news", [1, 2]),
])
async def test_messages_are_filtered_by_the_server(client, db, query, expected):
    await catalog.upsert(db, CATALOG)
    assert await ids(client, query) == expected


async def test_a_chat_is_filtered_by_any_name_it_was_reached_by(client, db):
    await catalog.upsert(db, CATALOG)
    await catalog.name_chat(db, -1001234, ["pets", "-1001234"])
    assert await ids(client, "chat=-1001234") == [4, 5, 6]
    assert await ids(client, "chat=-1009999") == []


async def test_filtered_pages_count_every_match_and_carry_date_caption_and_batch_limit(
        client, db):
    await catalog.upsert(db, CATALOG)
    body = (await client.get("/api/messages?chat=pets&offset=1&limit=1")).json()
    assert body["total"] == 3 and [i["message_id"] for i in body["items"]] == [5]
    assert body["batch_limit"] == 7
    first = (await client.get("/api/messages?limit=1")).json()["items"][0]
    assert first["caption"] == "The rocket launch"
    assert datetime.fromisoformat(first["date"]) == DAY


@pytest.mark.parametrize(("query", "says"), [
    ("media_type=gif", "media_type: unknown type 'gif'"),
    ("media_type=photo,sticker", "media_type: unknown type 'sticker'"),
    ("min_size=-1", "min_size: must be >= 0"),
    ("min_size=5MB", "min_size: must be an integer"),
    ("max_size=9223372036854775808", "max_size: must be <= 9223372036854775807"),
    ("offset=9223372036854775808", "offset: must be <= 9223372036854775807"),
    ("offset=99999999999999999999999", "offset: must be <= 9223372036854775807"),
    ("min_size=10&max_size=5", "min_size: 10 is larger than max_size 5"),
    ("since=yesterday", "since: 'yesterday' is not a date"),
    ("until=2025-13-01", "until: '2025-13-01' is not a date"),
    ("until=9999-12-31", "until: '9999-12-31' is beyond the calendar"),
    ("since=0001-01-01T00:00:00%2B14:00",
     "since: '0001-01-01T00:00:00+14:00' is beyond the calendar"),
    ("since=2025-02-01&until=2025-01-01", "since: 2025-02-01 is not before until"),
    ("q=" + "x" * 201, "q: "),
])
async def test_bad_filters_are_a_422_that_names_the_parameter(client, db, query, says):
    response = await client.get(f"/api/messages?{query}")
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "invalid_request" and body["suggestion"]
    assert body["detail"].startswith(says), body["detail"]


async def test_the_largest_bigint_offset_is_an_empty_page(client, db):
    await catalog.upsert(db, CATALOG)
    body = (await client.get(f"/api/messages?offset={2**63 - 1}")).json()
    assert body["items"] == [] and body["total"] == 7


# --- the batch list ----------------------------------------------------------------------


def entry(m: int, size: int = 1_000_000) -> CatalogEntry:
    return CatalogEntry(message_id=m, chat="chan", telegram_message_id=900 + m,
                        media_kind=MediaKind.photo, file_name=f"p{m}.jpg", size=size)


async def project(db, *events) -> None:
    for e in events:
        await apply_changes(db, fold_event(e))


def started(batch_id: str, at: datetime, ids: list[int], kind: str = "batch",
            ) -> BatchStarted:
    return BatchStarted(batch_id=batch_id, at=at, kind=kind, max_concurrent=2, force=False,
                        requested_ids=ids, to_download=[entry(m) for m in ids],
                        already_downloaded=[], failed_to_start=[])


async def three_batches(db) -> None:
    """old: finished, 2 files completed; mid: cancelled after 1 of 2; new: in flight with
    1 of 4 completed and 1 at 40 %."""
    await project(
        db,
        started("old", DAY, [1, 2]),
        *(PermitGranted(batch_id="old", at=DAY, message_id=m, job_id=f"old:{m}")
          for m in (1, 2)),
        *(FileCompleted(batch_id="old", at=DAY, message_id=m, job_id=f"old:{m}",
                        file_path=f"./media/photos/{m}.jpg", relative_path=f"photos/{m}.jpg",
                        size=1_000_000) for m in (1, 2)),
        BatchFinished(batch_id="old", at=DAY, overall_status="completed", completed=2,
                      failed=0),
        started("mid", DAY + timedelta(hours=1), [3, 4], kind="single"),
        PermitGranted(batch_id="mid", at=DAY, message_id=3, job_id="mid:3"),
        FileCompleted(batch_id="mid", at=DAY, message_id=3, job_id="mid:3",
                      file_path="./media/photos/3.jpg", relative_path="photos/3.jpg",
                      size=1_000_000),
        BatchCancelled(batch_id="mid", at=DAY, stopped=[4]),
        started("new", DAY + timedelta(hours=2), [5, 6, 7, 8]),
        PermitGranted(batch_id="new", at=DAY, message_id=5, job_id="new:5"),
        PermitGranted(batch_id="new", at=DAY, message_id=6, job_id="new:6"),
        JobDispatched(batch_id="new", at=DAY, message_id=6, job_id="new:6", attached=False),
        FileCompleted(batch_id="new", at=DAY, message_id=5, job_id="new:5",
                      file_path="./media/photos/5.jpg", relative_path="photos/5.jpg",
                      size=1_000_000),
    )
    await apply_changes(db, fold_progress(DownloadProgress(
        job_id="new:6", message_id=6, state="downloading", downloaded_size=400_000,
        total_size=1_000_000, download_speed=80_000, estimated_time_remaining=8, at=DAY)))


async def test_batches_are_listed_newest_first_with_their_overall_progress(client, db):
    await three_batches(db)
    response = await client.get("/api/media/batches")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["total"] == 3 and (body["offset"], body["limit"]) == (0, 20)
    new, mid, old = body["items"]
    assert [b["batch_id"] for b in body["items"]] == ["new", "mid", "old"]

    assert (new["overall_status"], new["finished"], new["kind"]) == ("in_progress", False,
                                                                     "batch")
    assert (new["total_files"], new["completed"], new["downloading"], new["pending"]) == (
        4, 1, 1, 2)
    assert (new["downloaded_size"], new["total_size"]) == (1_400_000, 4_000_000)
    assert new["progress"] == 35 and new["download_speed"] == 80_000
    assert new["summary"].startswith("1 of 4 files completed, 1 downloading")
    assert new["max_concurrent"] == 2 and new["force"] is False
    assert datetime.fromisoformat(new["created_at"]) == DAY + timedelta(hours=2)

    assert (mid["overall_status"], mid["kind"], mid["completed"], mid["cancelled"]) == (
        "cancelled", "single", 1, 1)
    assert mid["progress"] == 50 and mid["finished"] is True
    assert (old["overall_status"], old["progress"], old["completed"]) == ("completed", 100, 2)
    assert "files" not in old


async def test_the_batch_list_pages(client, db):
    await three_batches(db)
    body = (await client.get("/api/media/batches?offset=1&limit=1")).json()
    assert [b["batch_id"] for b in body["items"]] == ["mid"] and body["total"] == 3
    body = (await client.get(f"/api/media/batches?offset={2**63 - 1}")).json()
    assert body["items"] == [] and body["total"] == 3


@pytest.mark.parametrize(("query", "says"), [
    ("limit=0", "limit: must be >= 1"),
    ("limit=101", "limit: must be <= 100"),
    ("offset=-1", "offset: must be >= 0"),
    ("offset=9223372036854775808", "offset: must be <= 9223372036854775807"),
    ("offset=x", "offset: must be an integer"),
])
async def test_bad_batch_list_paging_is_a_422(client, query, says):
    response = await client.get(f"/api/media/batches?{query}")
    assert response.status_code == 422, response.text
    assert response.json()["detail"] == says


async def test_an_empty_batch_list(client):
    assert (await client.get("/api/media/batches")).json() == {
        "items": [], "total": 0, "offset": 0, "limit": 20}


async def test_a_message_id_beyond_bigint_is_a_422(client):
    response = await client.post("/api/media/batch-download",
                                 json={"message_ids": [1, 2**63]})
    assert response.status_code == 422, response.text
    assert response.json()["detail"] == (
        "message_ids: message ids are at most 9223372036854775807")
