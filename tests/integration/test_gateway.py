"""The HTTP gateway against real NATS and PostgreSQL (no orchestrator running): read-model
routes, input validation, files, health, and the answer when nobody takes commands."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import httpx
import pytest

from tgdl.contracts.catalog import CatalogEntry, MediaKind
from tgdl.contracts.commands import (
    BatchAccepted,
    CommandReply,
    Rejection,
    RejectReason,
    StartBatch,
)
from tgdl.contracts.errors import SUGGESTIONS, ErrorCode, Failure, FileFailure
from tgdl.contracts.events import (
    BatchCancelled,
    BatchFinished,
    BatchStarted,
    FileCompleted,
    FileFailed,
    JobDispatched,
    PermitGranted,
)
from tgdl.contracts.jobs import DownloadProgress
from tgdl.contracts.rules import CatalogReply, FetchMessages, FetchResult
from tgdl.contracts.status import OverallStatus
from tgdl.db import catalog
from tgdl.db.readmodel import batch_status, snapshot_json
from tgdl.db.schema import SchemaOutdated
from tgdl.gateway import batches as batches_module
from tgdl.gateway.app import create_app
from tgdl.gateway.errors import database_unavailable
from tgdl.gateway.media import MediaFiles
from tgdl.gateway.settings import GatewaySettings
from tgdl.projector.fold import fold_event, fold_progress
from tgdl.projector.sql import apply_changes

AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def settings(servers, isolation) -> GatewaySettings:
    return GatewaySettings(
        nats_url=servers.nats_url, database_url=servers.database_url,
        namespace=isolation.namespace, db_schema=isolation.schema,
        media_root=isolation.media_root, command_timeout=2.0, projection_wait=0.3,
    )


def entry(m: int) -> CatalogEntry:
    return CatalogEntry(message_id=m, chat="chan", telegram_message_id=900 + m,
                        media_kind=MediaKind.photo, file_name=f"p{m}.jpg", size=1_000_000)


async def project(db, *events) -> None:
    for e in events:
        await apply_changes(db, fold_event(e))


async def a_batch_in_flight(db) -> None:
    """Batch b: 1 completed, 2 downloading at 45 %, 3 pending."""
    await project(
        db,
        BatchStarted(batch_id="b", at=AT, kind="batch", max_concurrent=2, force=False,
                     requested_ids=[1, 2, 3], to_download=[entry(1), entry(2), entry(3)],
                     already_downloaded=[], failed_to_start=[]),
        PermitGranted(batch_id="b", at=AT, message_id=1, job_id="b:1"),
        PermitGranted(batch_id="b", at=AT, message_id=2, job_id="b:2"),
        JobDispatched(batch_id="b", at=AT, message_id=2, job_id="b:2", attached=False),
        FileCompleted(batch_id="b", at=AT, message_id=1, job_id="b:1",
                      file_path="./media/photos/1_901_p1.jpg",
                      relative_path="photos/1_901_p1.jpg", size=1_000_000),
    )
    await apply_changes(db, fold_progress(DownloadProgress(
        job_id="b:2", message_id=2, state="downloading", downloaded_size=450_000,
        total_size=1_000_000, download_speed=50_000, estimated_time_remaining=11, at=AT)))


def assert_error_body(response: httpx.Response, status: int, error: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body["error"], str) and body["detail"]
    assert "Traceback" not in response.text
    if error:
        assert body["error"] == error
    return body


# --- read model routes ---------------------------------------------------------------------


async def test_batch_status_carries_every_field_of_the_contract(client, db):
    await a_batch_in_flight(db)
    response = await client.get("/api/media/batch-status/b")
    assert response.status_code == 200
    body = response.json()
    assert {"batch_id", "total_files", "completed", "downloading", "failed", "pending",
            "overall_status", "files"} <= body.keys()
    assert (body["batch_id"], body["total_files"], body["completed"], body["downloading"],
            body["failed"], body["pending"], body["overall_status"]) == (
        "b", 3, 1, 1, 0, 1, "in_progress")
    done, running, waiting = body["files"]
    assert done == {"message_id": 1, "status": "completed", "progress": 100,
                    "file_path": "./media/photos/1_901_p1.jpg", "total_size": 1_000_000,
                    "download_url": "/media/photos/1_901_p1.jpg"}
    assert running == {"message_id": 2, "status": "downloading", "progress": 45,
                       "downloaded_size": 450_000, "total_size": 1_000_000,
                       "download_speed": 50_000, "estimated_time_remaining": 11}
    assert waiting == {"message_id": 3, "status": "pending", "progress": 0,
                       "total_size": 1_000_000}
    # the same body the projector publishes on NATS
    assert response.content == snapshot_json(await batch_status(db, "b"))


async def test_unknown_and_malformed_batch_ids(client):
    body = assert_error_body(await client.get("/api/media/batch-status/nope"), 404,
                             "batch_not_found")
    assert body["suggestion"]
    body = assert_error_body(await client.get("/api/media/batch-status/" + "x" * 65), 422,
                             "invalid_request")
    assert body["detail"].startswith("batch_id: must match")
    assert_error_body(await client.get("/api/media/batch-status/bad%20id"), 422)
    assert_error_body(await client.post("/api/media/batch-cancel/bad.id"), 422)


async def test_single_file_status_follows_its_latest_download(client, db):
    await a_batch_in_flight(db)
    await project(db,
                  BatchStarted(batch_id="s", at=AT, kind="single", max_concurrent=1,
                               force=False, requested_ids=[2], to_download=[entry(2)],
                               already_downloaded=[], failed_to_start=[]),
                  PermitGranted(batch_id="s", at=AT, message_id=2, job_id="s:2"),
                  JobDispatched(batch_id="s", at=AT, message_id=2, job_id="b:2",
                                attached=True))
    body = (await client.get("/api/media/status/2")).json()
    assert (body["status"], body["progress"], body["download_id"]) == ("downloading", 45, "s")
    body = (await client.get("/api/media/status/1")).json()
    assert (body["status"], body["download_url"]) == ("completed", "/media/photos/1_901_p1.jpg")
    assert body["download_id"] is None  # no single-file request asked for it
    assert_error_body(await client.get("/api/media/status/77"), 404, "not_requested")
    body = assert_error_body(await client.get("/api/media/status/abc"), 422)
    assert body["detail"] == "message_id: must be an integer"
    assert_error_body(await client.get("/api/media/status/0"), 422)


def put_file(settings: GatewaySettings, relative: str, size: int) -> None:
    path = settings.media_root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)


async def test_messages_list_each_message_with_its_download_state(client, db, settings):
    await catalog.upsert(db, [entry(m) for m in (1, 2, 3, 4)]
                         + [CatalogEntry(message_id=5, chat="chan", telegram_message_id=905)])
    await a_batch_in_flight(db)
    put_file(settings, "photos/1_901_p1.jpg", 1_000_000)
    page = (await client.get("/api/messages?limit=10")).json()
    assert page["total"] == 5 and (page["offset"], page["limit"]) == (0, 10)
    states = {i["message_id"]: (i["download_state"], i["download_url"]) for i in page["items"]}
    assert states == {1: ("downloaded", "/media/photos/1_901_p1.jpg"),
                      2: ("downloading", None), 3: ("queued", None),
                      4: ("not_downloaded", None), 5: ("no_media", None)}
    media = (await client.get("/api/messages?media_only=true&offset=1&limit=2")).json()
    assert [i["message_id"] for i in media["items"]] == [2, 3] and media["total"] == 4
    for bad in ("limit=0", "limit=201", "offset=-1", "limit=x"):
        assert_error_body(await client.get(f"/api/messages?{bad}"), 422, "invalid_request")


async def test_messages_list_says_what_the_media_folder_holds(client, db, settings):
    """A file deleted since its batch downloaded it is not "downloaded"; one found at its
    path and size (an earlier data folder, another tool) is, as a start would find it;
    one of another size, or a folder in its place, is not."""
    await catalog.upsert(db, [entry(m) for m in (1, 2, 3, 4, 6, 7)])
    await a_batch_in_flight(db)  # 1 completed (its file never written here)
    put_file(settings, "photos/4_904_p4.jpg", 1_000_000)  # where the default layout puts it
    put_file(settings, "photos/6_906_p6.jpg", 999)  # cut short
    (settings.media_root / "photos/7_907_p7.jpg").mkdir(parents=True)
    put_file(settings, "photos/3_903_p3.jpg", 1_000_000)  # queued: its batch decides
    page = (await client.get("/api/messages?limit=10")).json()
    states = {i["message_id"]: (i["download_state"], i["download_url"]) for i in page["items"]}
    assert states == {1: ("not_downloaded", None), 2: ("downloading", None),
                      3: ("queued", None), 4: ("downloaded", "/media/photos/4_904_p4.jpg"),
                      6: ("not_downloaded", None), 7: ("not_downloaded", None)}
    assert (await client.get(states[4][1])).status_code == 200


async def test_message_links_resolve_to_the_catalog_ids_a_start_takes(client, db):
    await catalog.upsert(db, [entry(1), entry(2), CatalogEntry(
        message_id=3, chat="-1001234567890", telegram_message_id=55,
        media_kind=MediaKind.video, file_name="v.mp4", size=10)])
    links = ["https://t.me/Chan/901", "t.me/chan/77/902", "https://t.me/c/1234567890/55",
             "https://t.me/chan/999", "https://t.me/chan", "tg://resolve?domain=chan&post=901"]
    response = await client.get("/api/messages/resolve", params={"link": links})
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert [i.get("message_id") for i in items] == [1, 2, 3, None, None, 1]
    assert [i["link"] for i in items] == links  # in the order given, as given
    assert (items[0]["chat"], items[0]["telegram_message_id"]) == ("Chan", 901)
    missing, no_message = items[3], items[4]
    assert missing["error"] == "message_not_found" and "tgdl sync chan" in missing["suggestion"]
    assert missing["detail"].startswith(  # nobody to ask Telegram here
        "message 999 of chat 'chan' is not in the catalog, and could not be fetched: no "
        "catalog service is listening on")
    assert "`tgdl run` starts it" in missing["suggestion"]
    assert no_message["error"] == "not_a_message_link" and "names no message" in no_message[
        "detail"] and no_message["suggestion"]
    assert "error" not in items[0]  # nothing unset is sent

    assert_error_body(await client.get("/api/messages/resolve"), 422, "invalid_request")
    too_many = await client.get("/api/messages/resolve",
                                params={"link": [f"t.me/chan/{n}" for n in range(1, 52)]})
    body = assert_error_body(too_many, 422, "invalid_request")
    assert body["detail"] == "link: 51 given; at most 50 (a batch's limit)"
    body = assert_error_body(await client.get(
        "/api/messages/resolve", params={"link": "t.me/chan/" + "1" * 600}), 422)
    assert body["detail"] == "link.0: longer than 500 characters"


async def test_links_beyond_one_fetch_are_asked_for_in_several(client, app, nc, settings,
                                                                 monkeypatch):
    # A batch limit above one FetchMessages' ids: every link is asked for, none dropped.
    monkeypatch.setattr(app.state.services.settings, "max_batch_ids", 150)
    asked: list[list[int]] = []

    async def fetch(msg) -> None:  # a stand-in catalog service: nothing found
        cmd = FetchMessages.model_validate_json(msg.data)
        asked.append(cmd.telegram_message_ids)
        await msg.respond(CatalogReply(ok=FetchResult(chat=cmd.chat, stored=[]))
                          .model_dump_json().encode())
    sub = await nc.subscribe(settings.names.cmd_catalog_fetch, cb=fetch)
    try:
        links = [f"t.me/chan/{n}" for n in range(1, 121)]
        r = await client.get("/api/messages/resolve", params={"link": links})
        assert r.status_code == 200, r.text
    finally:
        await sub.unsubscribe()
    assert sorted(len(ids) for ids in asked) == [20, 100]
    assert sorted(m for ids in asked for m in ids) == list(range(1, 121))


async def test_a_link_to_a_message_of_an_album_names_the_album_unless_single(client, db):
    photo = {"chat": "chan", "media_kind": MediaKind.photo, "size": 10}
    await catalog.upsert(db, [
        CatalogEntry(message_id=7, telegram_message_id=70, grouped_id=5, **photo),
        CatalogEntry(message_id=9, telegram_message_id=72, grouped_id=5, **photo),
        CatalogEntry(message_id=8, telegram_message_id=71, grouped_id=5, **photo),
        CatalogEntry(message_id=6, telegram_message_id=69, **photo)])
    links = ["t.me/chan/71", "t.me/chan/71?single", "t.me/chan/69"]
    items = (await client.get("/api/messages/resolve", params={"link": links})).json()["items"]
    assert [(i["message_id"], i.get("album")) for i in items] == [
        (8, [7, 8, 9]), (8, None), (6, None)]  # the album in the chat's order


# --- request validation ----------------------------------------------------------------------


@pytest.mark.parametrize(("body", "detail"), [
    ({"message_ids": [1], "max_concurrent": 0}, "max_concurrent: must be >= 1"),
    ({"message_ids": [1], "max_concurrent": 6}, "max_concurrent: must be <= 5"),
    ({"message_ids": []}, "message_ids: must hold at least 1 item(s)"),
    ({"message_ids": [1, -2]}, "message_ids: message ids are positive integers"),
    ({"message_ids": ["a"]}, "message_ids.0: must be an integer"),
    # JSON's types as sent: true is not message 1, "3" not a number, 1 not true
    ({"message_ids": [True]}, "message_ids.0: must be an integer"),
    ({"message_ids": ["7"]}, "message_ids.0: must be an integer"),
    ({"message_ids": [1], "max_concurrent": "3"}, "max_concurrent: must be an integer"),
    ({"message_ids": [1], "force": 1}, "force: must be true or false"),
    ({"message_ids": [1], "colour": "red"}, "colour: is not an accepted field"),
    ({}, "message_ids: is required"),
    ({"message_ids": [1], "name_template": "{chat}/{name}"},
     "name_template: the naming template's file name (after the last /) must start with "
     "{message_id}"),
    ({"message_ids": [1], "name_template": "../{message_id}_{name}"},
     "name_template: the naming template has a . or .. segment"),
    ({"message_ids": [1], "name_template": "{chat}/{message_id}_{caption:x}"},
     "name_template: {caption:x}: N must be a number"),
])
async def test_bad_batch_requests_are_explained(client, body, detail):
    response = await client.post("/api/media/batch-download", json=body)
    assert assert_error_body(response, 422, "invalid_request")["detail"].startswith(detail)


async def test_malformed_json_is_a_422_not_a_500(client):
    response = await client.post("/api/media/batch-download", content=b'{"message_ids": [1,',
                                 headers={"Content-Type": "application/json"})
    body = assert_error_body(response, 422)
    assert body["detail"] == "body is not valid JSON"
    assert "Send one JSON object" in body["suggestion"]  # no field to name: what a body is
    response = await client.post("/api/media/download/5", content=b"{nope",
                                 headers={"Content-Type": "application/json"})
    assert assert_error_body(response, 422)["detail"] == "body is not valid JSON"
    assert_error_body(await client.post("/api/media/download/abc"), 422)


async def test_unknown_routes_and_methods_answer_in_the_same_shape(client):
    assert_error_body(await client.get("/api/nothing"), 404, "not_found")
    wrong = assert_error_body(await client.delete("/api/media/batch-status/b"), 405,
                              "method_not_allowed")
    assert wrong["suggestion"].startswith("This URL answers GET")  # which method it takes


# --- commands without an orchestrator --------------------------------------------------------


@pytest.mark.parametrize(("method", "url", "body"), [
    ("POST", "/api/media/batch-download", {"message_ids": [1, 2]}),
    ("POST", "/api/media/batch-cancel/batch_1", None),
    ("POST", "/api/media/download/1", {"force": True}),
    ("POST", "/api/media/download/1", None),
    ("POST", "/api/media/cancel/1", None),
])
async def test_commands_without_an_orchestrator_are_503_with_advice(client, method, url, body):
    response = await client.request(method, url, json=body)
    body = assert_error_body(response, 503, "orchestrator_unavailable")
    assert "orchestrator" in body["detail"] and "tgdl run" in body["suggestion"]


# --- what the orchestrator's answers become in HTTP -----------------------------------------


@pytest.fixture
async def orchestrator_answers(nc, settings):
    """A stand-in orchestrator on NATS that answers every start with the given reply."""
    replies: list[bytes] = []

    async def answer(msg) -> None:
        await msg.respond(replies[0])

    sub = await nc.subscribe(settings.names.cmd_batch_start, cb=answer)
    await nc.flush()
    yield replies
    await sub.unsubscribe()


async def test_a_rejection_becomes_a_4xx_chosen_by_the_gateway(client, orchestrator_answers):
    orchestrator_answers.append(CommandReply(rejected=Rejection(
        reason=RejectReason.too_many_files, detail="51 message ids given; at most 50 per batch",
    )).model_dump_json().encode())
    response = await client.post("/api/media/batch-download",
                                 json={"message_ids": list(range(1, 52))})
    body = assert_error_body(response, 422, "too_many_files")
    assert body["detail"].startswith("51 message ids") and body["suggestion"]


async def test_a_full_batch_log_is_a_507_that_says_what_to_do(client, orchestrator_answers):
    orchestrator_answers.append(CommandReply(rejected=Rejection(
        reason=RejectReason.storage_full, detail="no room for a new batch log",
    )).model_dump_json().encode())
    response = await client.post("/api/media/batch-download", json={"message_ids": [1]})
    body = assert_error_body(response, 507, "storage_full")
    assert "TGDL_EVENTS_MAX_MSGS" in body["suggestion"]


async def test_an_accepted_batch_becomes_the_contract_body(client, orchestrator_answers, db):
    orchestrator_answers.append(CommandReply(ok=BatchAccepted(
        batch_id="batch_x", requested_ids=[1, 2, 3], started=[1], already_downloaded=[],
        already_downloading=[1], failed_to_start=[FileFailure.of_message(
            3, ErrorCode.no_media, "message 3 carries no media")],
    )).model_dump_json().encode())
    response = await client.post("/api/media/batch-download", json={"message_ids": [1, 2, 3]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["batch_id"], body["status"], body["total_files"], body["started_downloads"],
            body["already_downloading"]) == ("batch_x", "started", 3, [1], [1])
    assert body["failed_to_start"] == [{
        "message_id": 3, "error": "no_media", "detail": "message 3 carries no media",
        "suggestion": SUGGESTIONS[ErrorCode.no_media]}]
    assert body["message"].startswith("Batch download started with 3 files")


async def test_a_start_giving_only_ids_asks_for_the_documented_defaults(client, nc, settings):
    sent: list[StartBatch] = []

    async def answer(msg) -> None:
        sent.append(StartBatch.model_validate_json(msg.data))
        await msg.respond(CommandReply(ok=BatchAccepted(
            batch_id="batch_plain", requested_ids=[1], started=[], already_downloaded=[],
            already_downloading=[], failed_to_start=[
                FileFailure.of_message(1, ErrorCode.no_media, "none")],
        )).model_dump_json().encode())
    sub = await nc.subscribe(settings.names.cmd_batch_start, cb=answer)
    await nc.flush()  # the stand-in answers before the gateway asks
    try:
        response = await client.post("/api/media/batch-download", json={"message_ids": [1]})
        assert response.status_code == 200, response.text
    finally:
        await sub.unsubscribe()
    [cmd] = sent  # max_concurrent 3, no force, normal priority, the configured layout
    assert (cmd.max_concurrent, cmd.force, cmd.priority, cmd.name_template) == (
        3, False, "normal", None)


async def test_a_start_the_orchestrator_accepted_is_answered_with_postgresql_away(
        app, client, orchestrator_answers, monkeypatch):
    orchestrator_answers.append(CommandReply(ok=BatchAccepted(
        batch_id="batch_accepted", requested_ids=[1], started=[1], already_downloaded=[],
        already_downloading=[], failed_to_start=[])).model_dump_json().encode())

    async def away(*args):
        raise database_unavailable("connection refused")
    monkeypatch.setattr(app.state.services.pool, "fetchval", away)
    # the batch exists and downloads: a 503 would have the client start it again
    response = await client.post("/api/media/batch-download", json={"message_ids": [1]})
    assert response.status_code == 200, response.text
    assert (response.json()["batch_id"], response.json()["status"]) == (
        "batch_accepted", "started")


async def test_an_unreadable_reply_is_a_502(client, orchestrator_answers):
    orchestrator_answers.append(b'{"ok": {"type": "Something"}}')
    response = await client.post("/api/media/batch-download", json={"message_ids": [1]})
    assert_error_body(response, 502, "bad_gateway")


async def test_a_retry_starts_the_files_another_try_can_mend_as_the_batch_ran(
        client, db, nc, settings):
    template = "{chat}/{message_id}_{name}"
    await project(
        db,
        BatchStarted(batch_id="b", at=AT, kind="batch", max_concurrent=2, force=True,
                     requested_ids=[1, 2, 3, 4, 5, 6],
                     to_download=[entry(m) for m in (1, 2, 3, 5, 6)],
                     already_downloaded=[], name_template=template, priority="high",
                     failed_to_start=[FileFailure.of_message(4, ErrorCode.no_media, "none")]),
        FileCompleted(batch_id="b", at=AT, message_id=1, job_id="b:1", size=1,
                      file_path="./media/chan/1_p1.jpg", relative_path="chan/1_p1.jpg"),
        FileFailed(batch_id="b", at=AT, message_id=2, job_id="b:2",
                   failure=Failure.of(ErrorCode.network, "timed out")),
        FileFailed(batch_id="b", at=AT, message_id=5, job_id="b:5",
                   failure=Failure.of(ErrorCode.message_deleted, "gone")),
        BatchCancelled(batch_id="b", at=AT, stopped=[3, 6]))
    sent: list[StartBatch] = []

    async def answer(msg) -> None:
        cmd = StartBatch.model_validate_json(msg.data)
        sent.append(cmd)
        await msg.respond(CommandReply(ok=BatchAccepted(
            batch_id="batch_again", requested_ids=cmd.message_ids, started=cmd.message_ids,
            already_downloaded=[], already_downloading=[], failed_to_start=[],
        )).model_dump_json().encode())
    sub = await nc.subscribe(settings.names.cmd_batch_start, cb=answer)
    await nc.flush()  # the stand-in answers before the gateway asks
    try:
        response = await client.post("/api/media/batch-retry/b")
        assert response.status_code == 200, response.text
        assert response.json()["started_downloads"] == [2, 3, 6]
        [cmd] = sent  # the failed and cancelled ones, in the batch's order, as it ran
        assert (cmd.message_ids, cmd.max_concurrent, cmd.priority, cmd.name_template,
                cmd.force) == ([2, 3, 6], 2, "high", template, False)
    finally:
        await sub.unsubscribe()

    assert_error_body(await client.post("/api/media/batch-retry/nope"), 404, "batch_not_found")
    await project(db, BatchStarted(
        batch_id="done", at=AT, kind="batch", max_concurrent=1, force=False,
        requested_ids=[1], to_download=[], already_downloaded=[], failed_to_start=[
            FileFailure.of_message(1, ErrorCode.no_media, "none")]))
    body = assert_error_body(await client.post("/api/media/batch-retry/done"), 409,
                             "nothing_to_retry")
    assert "no failed or cancelled file another try could mend" in body["detail"]


@pytest.mark.parametrize(("subject", "url", "body", "error", "service"), [
    ("cmd_batch_start", "/api/media/batch-download", {"message_ids": [1]},
     "orchestrator_unavailable", "the orchestrator"),
    ("cmd_rule_create", "/api/rules", {"chat": "chan"}, "catalog_unavailable",
     "the catalog service"),
])
async def test_a_service_that_hears_but_never_answers_is_a_503_naming_it(
        client, nc, settings, subject, url, body, error, service):
    sub = await nc.subscribe(getattr(settings.names, subject))  # takes it, says nothing
    await nc.flush()
    try:
        response = await client.post(url, json=body)
    finally:
        await sub.unsubscribe()
    answer = assert_error_body(response, 503, error)
    assert answer["detail"] == f"{service} did not answer within 2 s"
    assert int(response.headers["Retry-After"]) > 0


async def test_the_gateway_refuses_to_start_on_an_unmigrated_schema(servers):
    settings = GatewaySettings(nats_url=servers.nats_url, database_url=servers.database_url,
                               db_schema="never_migrated")
    app = create_app(settings)
    with pytest.raises(SchemaOutdated, match="tgdl migrate"):
        async with app.router.lifespan_context(app):
            pass


# --- files, health, page, events ------------------------------------------------------------


async def test_media_serves_finished_files_only(client, settings):
    photos = settings.media_root / "photos"
    photos.mkdir()
    (photos / "1_901_p1.jpg").write_bytes(b"jpeg bytes")
    (photos / "2_902_p2.jpg.part").write_bytes(b"half")
    (settings.media_root.parent / "secret.txt").write_text("keep out")

    response = await client.get("/media/photos/1_901_p1.jpg")
    assert (response.status_code, response.content) == (200, b"jpeg bytes")
    assert_error_body(await client.get("/media/photos/2_902_p2.jpg.part"), 404)
    for sneaky in ("/media/..%2Fsecret.txt", "/media/%2e%2e/secret.txt",
                   "/media/photos/..%2F..%2Fsecret.txt", "/media/photos/%2E%2E/../secret.txt"):
        response = await client.get(sneaky)
        assert response.status_code == 404 and b"keep out" not in response.content, sneaky
    assert_error_body(await client.get("/media/photos"), 404)
    missing = await client.get("/media/photos/3_903_p3.jpg")
    body = assert_error_body(missing, 404, "not_found")
    assert body["detail"] == "no finished download at /media/photos/3_903_p3.jpg"
    assert "download_url" in body["suggestion"]


async def test_a_media_file_the_gateway_cannot_read_is_a_503_naming_the_folder(
        client, settings, monkeypatch):
    photos = settings.media_root / "photos"
    photos.mkdir()
    (photos / "1_901_loop.jpg").symlink_to("1_901_loop.jpg")  # the disk answers ELOOP
    body = assert_error_body(await client.get("/media/photos/1_901_loop.jpg"), 503,
                             "storage_unavailable")
    assert body["unavailable"] == "media_root" and "/media/photos/1_901_loop.jpg" in body[
        "detail"]

    def refused(self, path):  # as a file the gateway's user may not read (not as root)
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(MediaFiles, "lookup_path", refused)
    body = assert_error_body(await client.get("/media/photos/2_902_p.jpg"), 503,
                             "storage_unavailable")
    assert "permission denied" in body["detail"]  # not a 401 blaming the caller's token


async def test_healthz_reports_both_dependencies(client):
    response = await client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"nats": "ok", "postgres": "ok"})


async def test_healthz_is_503_and_names_what_is_down(app, client):
    await app.state.services.pool.close()  # as if PostgreSQL went away
    body = assert_error_body(await client.get("/healthz"), 503, "unhealthy")
    assert body["nats"] == "ok" and body["postgres"].startswith("down")
    assert body["detail"] == {"nats": "ok", "postgres": body["postgres"]}


async def test_an_event_stream_whose_last_snapshot_was_lost_reads_the_batch_again(
        client, db, monkeypatch):
    """A snapshot published while the gateway's NATS connection was down never arrives:
    the stream reads the batch at its next keep-alive and still ends."""
    monkeypatch.setattr(batches_module, "KEEPALIVE_SECONDS", 0.2)
    await a_batch_in_flight(db)
    stream = asyncio.create_task(client.get("/api/media/batch-events/b"))
    await project(db, BatchFinished(batch_id="b", at=AT, overall_status="completed",
                                    completed=3, failed=0))  # and nothing published
    async with asyncio.timeout(10):
        response = await stream
    events = [json.loads(line.removeprefix("data: "))
              for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1]["finished"] is True and events[-1]["overall_status"] == "completed"


async def test_an_event_stream_that_cannot_go_on_says_why_in_an_error_event(
        app, client, db, monkeypatch):
    await a_batch_in_flight(db)

    async def away(*args):
        raise database_unavailable("connection refused")
    monkeypatch.setattr(type(app.state.services), "view", away)
    response = await client.get("/api/media/batch-events/b")
    assert response.status_code == 200  # the stream had begun
    event, data = response.text.strip().splitlines()
    assert event == "event: error"
    body = json.loads(data.removeprefix("data: "))
    assert body["error"] == "database_unavailable" and "PostgreSQL" in body["detail"]


async def test_the_web_page_is_served(client):
    response = await client.get("/")
    assert response.status_code == 200 and "text/html" in response.headers["content-type"]
    assert '<script src="/static/app.js">' in response.text  # no inline code (CSP)
    assert "/api/media/batch-download" in (await client.get("/static/app.js")).text


async def test_batch_events_relay_snapshots_until_the_batch_finishes(client, db, settings, nc):
    await a_batch_in_flight(db)
    stream = asyncio.create_task(client.get("/api/media/batch-events/b"))
    finished = (await batch_status(db, "b")).model_copy(
        update={"finished": True, "overall_status": OverallStatus.failed})
    # publish the final snapshot until the stream, once subscribed, relays it and ends
    async with asyncio.timeout(10):
        while not stream.done():
            await nc.publish(settings.names.batch_progress("b"),
                             snapshot_json(finished))
            await asyncio.wait({stream}, timeout=0.05)
    response = stream.result()
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line.removeprefix("data: "))
              for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[0]["overall_status"] == "in_progress"  # the status at connection time
    assert events[-1]["finished"] is True and len(events) >= 2

    await project(db, BatchFinished(batch_id="b", at=AT, overall_status="completed",
                                    completed=3, failed=0))
    response = await client.get("/api/media/batch-events/b")  # already over: one event
    [line] = [x for x in response.text.splitlines() if x.startswith("data: ")]
    assert json.loads(line.removeprefix("data: "))["overall_status"] == "completed"
    assert_error_body(await client.get("/api/media/batch-events/nope"), 404, "batch_not_found")


async def test_an_unexpected_failure_is_a_500_without_a_traceback(app, db, settings):
    await db.execute("DROP TABLE batch_files CASCADE")  # this test's own schema
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        response = await client.get("/api/media/batch-status/b")
    body = assert_error_body(response, 500, "internal_error")
    assert "batch_files" not in response.text and body["suggestion"]
