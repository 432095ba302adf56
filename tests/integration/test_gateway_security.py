"""The gateway exposed: API tokens, signed /media/ links, the Host check, the cross-site
guard, the body cap and what /media/ serves inline, against real NATS and PostgreSQL."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from urllib.parse import urlsplit

import httpx
import pytest

from tgdl.contracts.catalog import CatalogEntry, MediaKind
from tgdl.contracts.commands import BatchAccepted, CommandReply, StartBatch
from tgdl.contracts.errors import ErrorCode, FileFailure
from tgdl.contracts.events import BatchFinished, BatchStarted, FileCompleted, PermitGranted
from tgdl.db import catalog
from tgdl.db.connection import connect
from tgdl.db.schema import migrate_database
from tgdl.gateway.app import create_app
from tgdl.gateway.settings import GatewaySettings
from tgdl.projector.fold import fold_event
from tgdl.projector.sql import apply_changes

AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TOKEN = "s3cret-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def gateway_settings(servers, isolation, **extra) -> GatewaySettings:
    return GatewaySettings(
        nats_url=servers.nats_url, database_url=servers.database_url,
        namespace=isolation.namespace, db_schema=isolation.schema,
        media_root=isolation.media_root, command_timeout=0.3, projection_wait=0.3, **extra)


async def serve(settings: GatewaySettings):
    await migrate_database(settings.database_url, settings.db_schema)
    app = create_app(settings)
    return app, app.router.lifespan_context(app)


@pytest.fixture
async def open_client(servers, isolation):
    """Tokens off, as on loopback by default."""
    app, lifespan = await serve(gateway_settings(servers, isolation))
    async with lifespan, httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                           base_url="http://127.0.0.1:8000") as client:
        yield client


@pytest.fixture
async def client(servers, isolation):
    """Tokens on: the plain one and another given as its SHA-256."""
    other = hashlib.sha256(b"second-token").hexdigest()
    app, lifespan = await serve(gateway_settings(
        servers, isolation, api_token=f"{TOKEN}, sha256:{other}"))
    async with lifespan, httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                           base_url="http://localhost:8000") as client:
        yield client


async def a_finished_file(servers, isolation, name: str, content: bytes = b"<b>hi</b>") -> str:
    """Batch b with message 1 downloaded as `name`; the file on disk."""
    conn = await connect(servers.database_url, isolation.schema)
    try:
        entry = CatalogEntry(message_id=1, chat="chan", telegram_message_id=901,
                             media_kind=MediaKind.document, file_name=name, size=len(content))
        relative = f"documents/1_901_{name}"
        for event in (
            BatchStarted(batch_id="b", at=AT, kind="batch", max_concurrent=1, force=False,
                         requested_ids=[1], to_download=[entry], already_downloaded=[],
                         failed_to_start=[]),
            PermitGranted(batch_id="b", at=AT, message_id=1, job_id="b:1"),
            FileCompleted(batch_id="b", at=AT, message_id=1, job_id="b:1",
                          file_path=f"./media/{relative}", relative_path=relative,
                          size=len(content)),
            BatchFinished(batch_id="b", at=AT, overall_status="completed", completed=1,
                          failed=0),
        ):
            await apply_changes(conn, fold_event(event))
    finally:
        await conn.close()
    path = isolation.media_root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return f"/media/{relative}"


def assert_error(response: httpx.Response, status: int, error: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error and body["detail"] and body["suggestion"]
    return body


# --- tokens ----------------------------------------------------------------------------------


async def test_without_a_token_api_events_and_media_are_401(client, servers, isolation):
    url = await a_finished_file(servers, isolation, "p.jpg", b"\xff\xd8jpeg")
    for path in ("/api/media/batch-status/b", "/api/messages", "/api/media/batches",
                 "/api/media/batch-events/b", url):
        assert_error(await client.get(path), 401, "unauthorized")
        assert_error(await client.get(path, headers={"Authorization": "Bearer wrong"}), 401,
                     "unauthorized")
    assert_error(await client.post("/api/media/batch-cancel/b"), 401, "unauthorized")
    # the token in the query is for event streams only (an EventSource sends no headers)
    assert_error(await client.get(f"/api/messages?access_token={TOKEN}"), 401, "unauthorized")


async def test_either_token_opens_the_api(client, servers, isolation):
    await a_finished_file(servers, isolation, "p.jpg", b"\xff\xd8jpeg")
    for token in (TOKEN, "second-token"):
        response = await client.get("/api/media/batch-status/b",
                                    headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.text


async def test_answers_carry_signed_media_links_that_open_without_a_token(
        client, servers, isolation):
    await a_finished_file(servers, isolation, "p.jpg", b"\xff\xd8jpeg")
    status = (await client.get("/api/media/batch-status/b", headers=BEARER)).json()
    link = status["files"][0]["download_url"]
    assert link.startswith("/media/documents/1_901_p.jpg?exp=") and "&sig=" in link
    assert (await client.get(link)).content == b"\xff\xd8jpeg"
    single = (await client.get("/api/media/status/1", headers=BEARER)).json()
    assert (await client.get(single["download_url"])).status_code == 200
    page = (await client.get("/api/messages", headers=BEARER)).json()
    assert all("sig=" in m["download_url"] for m in page["items"] if m["download_url"])
    # another file with this link's signature, or an altered expiry, is refused
    path, query = link.split("?")
    assert_error(await client.get(f"/media/documents/other.jpg?{query}"), 401, "unauthorized")
    exp = int(query.split("exp=")[1].split("&")[0])
    forged = query.replace(f"exp={exp}", f"exp={exp + 10}")
    assert_error(await client.get(f"{path}?{forged}"), 401, "unauthorized")


async def test_an_expired_media_link_is_refused(servers, isolation):
    app, lifespan = await serve(gateway_settings(servers, isolation, api_token=TOKEN,
                                                 media_link_ttl=0.001))
    async with lifespan, httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                           base_url="http://localhost") as client:
        await a_finished_file(servers, isolation, "p.jpg", b"\xff\xd8jpeg")
        link = (await client.get("/api/media/status/1", headers=BEARER)).json()["download_url"]
        query = dict(p.split("=") for p in urlsplit(link).query.split("&"))
        # exp is in whole seconds and already past once rounded down with a tiny ttl
        stale = link.replace(f"exp={query['exp']}", f"exp={int(query['exp']) - 2}")
        assert_error(await client.get(stale), 401, "unauthorized")


async def test_event_streams_take_the_token_in_the_query(client, servers, isolation):
    await a_finished_file(servers, isolation, "p.jpg", b"\xff\xd8jpeg")
    response = await client.get(f"/api/media/batch-events/b?access_token={TOKEN}")
    assert response.status_code == 200  # finished: the stream ends after one snapshot
    assert b"sig=" in response.content


async def test_healthz_stays_open_and_says_only_up_or_down(client):
    response = await client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "up"}
    full = await client.get("/healthz", headers=BEARER)
    assert full.json() == {"nats": "ok", "postgres": "ok"}


async def test_without_tokens_links_are_plain_as_before(open_client, servers, isolation):
    url = await a_finished_file(servers, isolation, "p.jpg", b"\xff\xd8jpeg")
    status = (await open_client.get("/api/media/batch-status/b")).json()
    assert status["files"][0]["download_url"] == url


def test_a_malformed_hashed_token_is_a_clear_error():
    from tgdl.gateway.security import parse_tokens
    with pytest.raises(ValueError, match="64 hex digits"):
        parse_tokens("sha256:abc")


# --- browser defences ----------------------------------------------------------------------


async def test_an_html_named_file_is_an_attachment_with_nosniff(open_client, servers, isolation):
    url = await a_finished_file(servers, isolation, "x.html", b"<script>alert(1)</script>")
    response = await open_client.get(url)
    assert response.status_code == 200
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-disposition"].startswith("attachment")
    assert "sandbox" in response.headers["content-security-policy"]


async def test_svg_is_an_attachment_and_a_photo_is_shown(open_client, servers, isolation):
    svg = await a_finished_file(servers, isolation, "x.svg", b"<svg onload='alert(1)'/>")
    assert (await open_client.get(svg)).headers["content-disposition"].startswith("attachment")
    (isolation.media_root / "documents" / "p.jpg").write_bytes(b"\xff\xd8jpeg")
    photo = await open_client.get("/media/documents/p.jpg")
    assert photo.headers["content-type"] == "image/jpeg"
    assert "content-disposition" not in photo.headers
    assert photo.headers["x-content-type-options"] == "nosniff"


async def test_a_cross_site_post_without_a_body_is_refused(open_client):
    for path in ("/api/media/download/1", "/api/media/cancel/1", "/api/media/batch-cancel/b"):
        response = await open_client.post(path, headers={"Origin": "https://evil.example"})
        assert_error(response, 403, "cross_site_request")
        response = await open_client.post(path, headers={"Sec-Fetch-Site": "cross-site",
                                                         "Content-Type": "text/plain"},
                                          content=b"{}")
        assert_error(response, 403, "cross_site_request")
    # the page sends JSON (a cross-site page could only with a preflight, never allowed)
    response = await open_client.post("/api/media/batch-cancel/b", json={},
                                      headers={"Origin": "http://127.0.0.1:8000"})
    assert response.status_code != 403


async def test_a_foreign_host_is_421(open_client):
    response = await open_client.get("/api/messages", headers={"Host": "attacker.example"})
    assert_error(response, 421, "misdirected_request")
    for host in ("localhost:8000", "127.0.0.1", "[::1]:8000"):
        assert (await open_client.get("/api/messages", headers={"Host": host})).status_code \
            == 200


async def test_configured_host_names_are_answered(servers, isolation):
    app, lifespan = await serve(gateway_settings(servers, isolation,
                                                 allowed_hosts="tgdl.example.org"))
    async with lifespan, httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                           base_url="http://tgdl.example.org") as client:
        assert (await client.get("/api/messages")).status_code == 200


async def test_the_page_sends_a_strict_csp_and_runs_no_inline_code(open_client):
    page = await open_client.get("/")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "<script>" not in page.text and "style=" not in page.text
    for asset in ("/static/app.js", "/static/app.css"):
        assert (await open_client.get(asset)).status_code == 200
    assert (await open_client.get("/static/../app.py")).status_code == 404


# --- bounded input -------------------------------------------------------------------------


async def test_an_oversized_body_is_413_before_parsing(open_client):
    big = b'{"message_ids": [' + b"1," * 20_000 + b'1]}'
    response = await open_client.post("/api/media/batch-download", content=big,
                                      headers={"Content-Type": "application/json"})
    assert_error(response, 413, "too_large")

    async def chunks():  # no Content-Length: counted as it arrives
        for _ in range(10):
            yield b" " * 4096
    response = await open_client.post("/api/media/batch-download", content=chunks(),
                                      headers={"Content-Type": "application/json"})
    assert response.status_code == 413, response.text
    assert response.json()["error"] == "too_large"


async def test_ids_beyond_bigint_are_422(open_client):
    response = await open_client.post("/api/media/batch-download",
                                      json={"message_ids": [2**70]})
    assert response.status_code == 422


# --- the chat allow-list -------------------------------------------------------------------


async def chan_and_secret(servers, isolation, chan_id: int | None = None) -> None:
    """Message 1 in chat "chan", listed by its username (reached by its id `chan_id`
    too, if given); message 2 in chat "secret"."""
    conn = await connect(servers.database_url, isolation.schema)
    try:
        await catalog.upsert(conn, [
            CatalogEntry(message_id=1, chat="chan", telegram_message_id=901,
                         media_kind=MediaKind.document, file_name="p.jpg", size=6),
            CatalogEntry(message_id=2, chat="secret", telegram_message_id=902,
                         media_kind=MediaKind.document, file_name="s.jpg", size=6)])
        if chan_id is not None:
            await catalog.name_chat(conn, chan_id, ["chan", str(chan_id)])
    finally:
        await conn.close()


async def test_the_allow_list_hides_other_chats_from_the_list_and_media(servers, isolation):
    app, lifespan = await serve(gateway_settings(servers, isolation,
                                                 allowed_chats="@Chan"))
    async with lifespan, httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                           base_url="http://localhost") as client:
        allowed = await a_finished_file(servers, isolation, "p.jpg", b"\xff\xd8jpeg")
        await chan_and_secret(servers, isolation)
        (isolation.media_root / "documents" / "2_902_s.jpg").write_bytes(b"secret")
        # files named by other templates: the id, then any separator that is not a digit
        for name in ("1-p.jpg", "1.jpg", "2-s.jpg", "2.jpg"):
            (isolation.media_root / "documents" / name).write_bytes(b"x")
        page = (await client.get("/api/messages")).json()
        assert [m["message_id"] for m in page["items"]] == [1] and page["total"] == 1
        assert (await client.get(allowed)).status_code == 200
        assert (await client.get("/media/documents/1-p.jpg")).status_code == 200
        assert (await client.get("/media/documents/1.jpg")).status_code == 200
        assert_error(await client.get("/media/documents/2_902_s.jpg"), 404, "not_found")
        assert_error(await client.get("/media/documents/2-s.jpg"), 404, "not_found")
        assert_error(await client.get("/media/documents/2.jpg"), 404, "not_found")
        assert_error(await client.get("/media/documents/3_1_unknown.jpg"), 404, "not_found")
        # a link into another chat says the chat may not be read, not whether it exists
        items = (await client.get("/api/messages/resolve", params={"link": [
            "t.me/chan/901", "t.me/secret/902", "t.me/secret/903"]})).json()["items"]
        assert [i.get("message_id") for i in items] == [1, None, None]
        assert [i.get("error") for i in items] == [None, "access_denied", "access_denied"]


async def test_a_token_limited_to_a_chat_by_its_id_reads_it_by_its_other_names(
        servers, isolation):
    app, lifespan = await serve(gateway_settings(
        servers, isolation, api_token=TOKEN, api_tokens="lim@-1001234; other@secret"))
    async with lifespan, httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                           base_url="http://localhost") as client:
        mine = await a_finished_file(servers, isolation, "p.jpg", b"\xff\xd8jpeg")
        await chan_and_secret(servers, isolation, chan_id=-1001234)
        limited = {"Authorization": "Bearer lim"}
        page = (await client.get("/api/messages", headers=limited)).json()
        assert [m["message_id"] for m in page["items"]] == [1]
        assert (await client.get(mine, headers=limited)).status_code == 200
        assert "sig=" in (await client.get("/api/media/batch-status/b", headers=limited)).text
        items = (await client.get("/api/messages/resolve", headers=limited, params={
            "link": ["t.me/chan/901", "t.me/c/1234/901", "t.me/secret/902"]})).json()["items"]
        assert [i.get("message_id") for i in items] == [1, 1, None]
        assert items[2]["error"] == "access_denied"
        # a token limited to another chat sees none of it
        other = {"Authorization": "Bearer other"}
        page = (await client.get("/api/messages", headers=other)).json()
        assert [m["message_id"] for m in page["items"]] == [2]
        assert_error(await client.get("/api/media/batch-status/b", headers=other), 404,
                     "batch_not_found")


async def test_an_allow_list_naming_a_chat_by_its_id_shows_it_by_its_username(
        servers, isolation):
    app, lifespan = await serve(gateway_settings(servers, isolation,
                                                 allowed_chats="-1001234"))
    async with lifespan, httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                           base_url="http://localhost") as client:
        mine = await a_finished_file(servers, isolation, "p.jpg", b"\xff\xd8jpeg")
        await chan_and_secret(servers, isolation, chan_id=-1001234)
        page = (await client.get("/api/messages")).json()
        assert [m["message_id"] for m in page["items"]] == [1]
        assert (await client.get(mine)).status_code == 200
        items = (await client.get("/api/messages/resolve", params={
            "link": ["t.me/chan/901", "t.me/secret/902"]})).json()["items"]
        assert [i.get("message_id") for i in items] == [1, None]


async def test_a_token_limited_to_a_chat_sees_and_fetches_only_that_chat(
        servers, isolation, nc):
    app, lifespan = await serve(gateway_settings(
        servers, isolation, api_token=TOKEN, api_tokens="lim@@Chan; other@x,y"))
    limited = {"Authorization": "Bearer lim"}
    async with lifespan, httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                           base_url="http://localhost") as client:
        mine = await a_finished_file(servers, isolation, "p.jpg", b"\xff\xd8jpeg")
        conn = await connect(servers.database_url, isolation.schema)
        try:  # message 1 (batch b, finished) is in chat "secret" now; 2 is in "chan"
            await catalog.upsert(conn, [
                CatalogEntry(message_id=1, chat="secret", telegram_message_id=901,
                             media_kind=MediaKind.document, file_name="p.jpg", size=6),
                CatalogEntry(message_id=2, chat="chan", telegram_message_id=902,
                             media_kind=MediaKind.document, file_name="c.jpg", size=6)])
        finally:
            await conn.close()
        (isolation.media_root / "documents" / "2_902_c.jpg").write_bytes(b"mine!!")
        page = (await client.get("/api/messages", headers=limited)).json()
        assert [m["message_id"] for m in page["items"]] == [2]
        assert (await client.get("/api/messages", headers=BEARER)).json()["total"] == 2
        assert_error(await client.get(mine, headers=limited), 404, "not_found")
        assert (await client.get(mine, headers=BEARER)).status_code == 200
        assert (await client.get("/media/documents/2_902_c.jpg", headers=limited)).content \
            == b"mine!!"
        assert "sig=" in (await client.get("/api/media/batch-status/b", headers=BEARER)).text
        # another chat's batch and message are as if they did not exist, nor can be steered
        for method, path in (("GET", "/api/media/batch-status/b"),
                             ("GET", "/api/media/batch-events/b?access_token=lim"),
                             ("POST", "/api/media/batch-cancel/b"),
                             ("POST", "/api/media/batch-pause/b"),
                             ("POST", "/api/media/batch-resume/b")):
            assert_error(await client.request(method, path, headers=limited), 404,
                         "batch_not_found")
        assert_error(await client.patch("/api/media/batch/b", json={"max_concurrent": 2},
                                        headers=limited), 404, "batch_not_found")
        assert_error(await client.get("/api/media/status/1", headers=limited), 404,
                     "not_requested")
        cancel = await client.post("/api/media/cancel/1", headers=limited)
        assert cancel.json()["status"] == "not_downloading"

        # a start carries the token's chats; the orchestrator refuses the others
        commands: list[StartBatch] = []

        async def answer(msg) -> None:
            commands.append(StartBatch.model_validate_json(msg.data))
            await msg.respond(CommandReply(ok=BatchAccepted(
                batch_id="batch_y", requested_ids=[1], started=[], already_downloaded=[],
                already_downloading=[], failed_to_start=[FileFailure.of_message(
                    1, ErrorCode.access_denied, "not your chat")])).model_dump_json().encode())
        sub = await nc.subscribe(app.state.services.settings.names.cmd_batch_start, cb=answer)
        try:
            await nc.flush()
            response = await client.post("/api/media/batch-download",
                                         json={"message_ids": [1]}, headers=limited)
            assert response.json()["failed_to_start"][0]["error"] == "access_denied"
            await client.post("/api/media/batch-download", json={"message_ids": [1]},
                              headers=BEARER)
        finally:
            await sub.unsubscribe()
        assert [c.chats for c in commands] == [["chan"], None]


async def test_a_token_limited_to_chats_lists_only_the_batches_it_may_see(servers, isolation):
    app, lifespan = await serve(gateway_settings(
        servers, isolation, api_token=TOKEN, api_tokens="lim@@Chan,other"))
    limited = {"Authorization": "Bearer lim"}
    chats = {1: "secret", 2: "chan", 3: "@CHAN", 4: "other"}
    entries = {m: CatalogEntry(message_id=m, chat=chat, telegram_message_id=900 + m,
                               media_kind=MediaKind.document, file_name=f"{m}.jpg", size=6)
               for m, chat in chats.items()}
    batches = {"only_secret": [1], "only_chan": [2, 3], "mixed": [2, 1], "two_chats": [3, 4]}
    conn = await connect(servers.database_url, isolation.schema)
    try:
        await migrate_database(servers.database_url, isolation.schema)
        await catalog.upsert(conn, list(entries.values()))
        for batch_id, ids in batches.items():
            await apply_changes(conn, fold_event(BatchStarted(
                batch_id=batch_id, at=AT, kind="batch", max_concurrent=1, force=False,
                requested_ids=ids, to_download=[entries[m] for m in ids],
                already_downloaded=[], failed_to_start=[])))
    finally:
        await conn.close()
    async with lifespan, httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                           base_url="http://localhost") as client:
        page = (await client.get("/api/media/batches", headers=limited)).json()
        assert sorted(b["batch_id"] for b in page["items"]) == ["only_chan", "two_chats"]
        assert page["total"] == 2
        paged = (await client.get("/api/media/batches?limit=1&offset=1",
                                  headers=limited)).json()
        assert [b["batch_id"] for b in paged["items"]] == ["only_chan"]
        assert (await client.get("/api/media/batches", headers=BEARER)).json()["total"] == 4
        # the list agrees with what the token may open
        for batch_id in batches:
            status = await client.get(f"/api/media/batch-status/{batch_id}", headers=limited)
            listed = batch_id in ("only_chan", "two_chats")
            assert status.status_code == (200 if listed else 404), batch_id


async def test_message_ids_beyond_bigint_in_the_path_are_422(open_client):
    for response in (await open_client.get(f"/api/media/status/{2**70}"),
                     await open_client.post(f"/api/media/cancel/{2**70}"),
                     await open_client.post(f"/api/media/download/{2**70}")):
        assert_error(response, 422, "invalid_request")


async def test_a_nul_in_a_text_filter_is_422(open_client):
    for query in ("chat=G%00", "q=a%00b"):
        assert_error(await open_client.get(f"/api/messages?{query}"), 422, "invalid_request")
