"""`tgdl login` and `tgdl sync`: Telethon's real client against a scripted Telegram, the
catalog in the real PostgreSQL."""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import asyncpg
import pytest
from fakes.telegram_server import MiB, TelegramServer, content, sha256
from telethon import events
from telethon.tl import functions, types

from tgdl.catalog.settings import CatalogSettings
from tgdl.catalog.sources import TelethonSource
from tgdl.catalog.telethon_sync import SyncError, TelegramBusy, fetch_messages, sync_chat
from tgdl.contracts.catalog import CatalogEntry, MediaKind
from tgdl.db.catalog import by_chat_and_id, get_many
from tgdl.db.connection import connect
from tgdl.db.schema import migrate
from tgdl.downloader.files import PartFile
from tgdl.downloader.parts import fetch_parts
from tgdl.downloader.telegram.port import PART_SIZE
from tgdl.downloader.telegram.telethon import TelethonTelegram
from tgdl.telegram.client import (
    TelegramSettings,
    TelegramSetupError,
    build_client,
    client_options,
    login,
)


@pytest.fixture
def server() -> TelegramServer:
    return TelegramServer()


@pytest.fixture
async def db(servers, isolation) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(servers.database_url, isolation.schema)
    await migrate(conn, isolation.schema)
    yield conn
    await conn.execute(f'DROP SCHEMA "{isolation.schema}" CASCADE')
    await conn.close()


@pytest.fixture
def settings(servers, isolation, tmp_path: Path) -> CatalogSettings:
    return CatalogSettings(
        database_url=servers.database_url, db_schema=isolation.schema,
        api_id=12345, api_hash="0" * 32, session_file=tmp_path / "tg" / "telegram.session",
    )


@pytest.fixture
async def client(server: TelegramServer) -> AsyncIterator:
    c = server.client(server.logged_in_session(), **client_options())
    yield c
    await c.disconnect()


async def rows(conn: asyncpg.Connection) -> list[dict]:
    records = await conn.fetch(
        "SELECT message_id, chat, telegram_message_id, media_kind, file_name, size, caption"
        " FROM catalog ORDER BY message_id")
    return [dict(r) for r in records]


# --- sync ------------------------------------------------------------------------------------


async def test_sync_adds_media_messages_and_a_second_run_adds_nothing(
    server, client, db, settings
):
    news = server.add_channel("news")
    doc = server.post_document(news, content(3000, 1), file_name="a.pdf",
                               mime_type="application/pdf", text="the report")
    server.post_text(news, "no media here")
    photo = server.post_photo(news, content(9000, 2))
    voice = server.post_document(
        news, content(800, 3), mime_type="audio/ogg",
        attributes=[types.DocumentAttributeAudio(duration=2, voice=True)])
    gone = server.post_document(news, content(100, 4))
    server.delete(news, gone)

    report = await sync_chat(settings, "@news", None, client=client, conn=db, page_wait=0)

    assert (report.chat, report.scanned, report.added, report.newest_telegram_id) == (
        "news", 4, 3, voice)
    assert await rows(db) == [
        {"message_id": 1, "chat": "news", "telegram_message_id": doc, "media_kind": "document",
         "file_name": "a.pdf", "size": 3000, "caption": "the report"},
        {"message_id": 2, "chat": "news", "telegram_message_id": photo, "media_kind": "photo",
         "file_name": None, "size": 9000, "caption": None},
        {"message_id": 3, "chat": "news", "telegram_message_id": voice, "media_kind": "voice",
         "file_name": None, "size": 800, "caption": None},
    ]

    again = await sync_chat(settings, "news", None, client=client, conn=db, page_wait=0)

    assert (again.scanned, again.added, again.newest_telegram_id) == (0, 0, voice)
    assert len(await rows(db)) == 3


async def test_new_messages_are_picked_up_incrementally(server, client, db, settings):
    news = server.add_channel("news")
    server.post_document(news, content(100, "old"))
    first = await sync_chat(settings, "news", None, client=client, conn=db, page_wait=0)
    newer = server.post_document(news, content(200, "new"), file_name="new.zip")
    server.post_text(news, "chatter")
    asked_before = len(server.requests(functions.messages.GetHistoryRequest))

    report = await sync_chat(settings, "news", None, client=client, conn=db, page_wait=0)

    assert (report.scanned, report.added) == (2, 1)
    assert report.newest_telegram_id == newer + 1
    history = server.requests(functions.messages.GetHistoryRequest)[asked_before:]
    assert history[0].request.offset_id == first.newest_telegram_id + 1  # started after it
    assert [(r["message_id"], r["telegram_message_id"]) for r in await rows(db)] == [
        (1, 1), (2, newer)]


async def test_message_ids_are_unique_and_stable_across_chats(server, client, db, settings):
    news, blog = server.add_channel("news"), server.add_channel("blog")
    for n in range(3):
        server.post_document(news, content(10, f"n{n}"))
        server.post_document(blog, content(10, f"b{n}"))
    await sync_chat(settings, "news", None, client=client, conn=db, page_wait=0)
    await sync_chat(settings, "blog", None, client=client, conn=db, page_wait=0)
    before = {(r["chat"], r["telegram_message_id"]): r["message_id"] for r in await rows(db)}
    late = server.post_document(news, content(10, "late"))

    await sync_chat(settings, "news", None, client=client, conn=db, page_wait=0)

    after = {(r["chat"], r["telegram_message_id"]): r["message_id"] for r in await rows(db)}
    assert sorted(before.values()) == [1, 2, 3, 4, 5, 6]
    assert {k: after[k] for k in before} == before  # existing ids never change
    assert after[("news", late)] == 7


async def test_a_limited_first_sync_takes_the_latest_and_later_runs_leave_no_gap(
    server, client, db, settings
):
    news = server.add_channel("news")
    ids = [server.post_document(news, content(10, n)) for n in range(5)]

    latest = await sync_chat(settings, "news", 2, client=client, conn=db, page_wait=0)
    assert (latest.scanned, latest.newest_telegram_id) == (2, ids[-1])
    assert {r["telegram_message_id"] for r in await rows(db)} == set(ids[-2:])

    new = [server.post_document(news, content(10, f"new{n}")) for n in range(3)]
    limited = await sync_chat(settings, "news", 2, client=client, conn=db, page_wait=0)
    assert limited.newest_telegram_id == new[1]  # oldest new ones first: no gap behind
    rest = await sync_chat(settings, "news", None, client=client, conn=db, page_wait=0)
    assert (rest.scanned, rest.newest_telegram_id) == (1, new[2])
    assert {r["telegram_message_id"] for r in await rows(db)} == set(ids[-2:] + new)


async def test_linked_messages_are_fetched_into_the_catalog_without_moving_the_sync_mark(
    server, client, db, settings
):
    news = server.add_channel("news")
    first = server.post_document(news, content(100, 1), file_name="old.pdf")
    await sync_chat(settings, "news", None, client=client, conn=db, page_wait=0)
    wanted = server.post_document(news, content(2000, 2), file_name="linked.pdf")
    text = server.post_text(news, "only words")
    gone = server.post_document(news, content(10, 3))
    server.delete(news, gone)
    before = len(server.log)

    fetched = await fetch_messages(client, db, "News", [wanted, text, gone, 999])

    assert (fetched.chat, fetched.stored) == ("news", [wanted])
    assert [(r["telegram_message_id"], r["file_name"]) for r in await rows(db)] == [
        (first, "old.pdf"), (wanted, "linked.pdf")]
    asked = [type(r.request).__name__ for r in server.log[before:]]
    assert asked.count("GetMessagesRequest") == 1 and "GetHistoryRequest" not in asked
    # the next sync still reads everything after the last synced message
    later = await sync_chat(settings, "news", None, client=client, conn=db, page_wait=0)
    assert later.scanned == 2  # the linked document and the text: what came after `first`
    with pytest.raises(SyncError, match="Cannot sync 'nobody'"):
        await fetch_messages(client, db, "nobody", [1])
    # a flood wait is not "cannot read": Telegram may answer later
    server.flood_until[functions.channels.GetMessagesRequest] = server.clock + 30
    with pytest.raises(TelegramBusy, match="Telegram asked to wait 30 s"):
        await fetch_messages(client, db, "news", [wanted])


async def test_a_linked_album_message_brings_its_whole_album(server, client, db, settings):
    news = server.add_channel("news")
    before = server.post_photo(news, content(50, 1))  # a neighbour, not of the album
    album = [server.post_photo(news, content(100 + i, i), grouped_id=77) for i in range(3)]
    after = server.post_document(news, content(60, 9), grouped_id=78)  # another album
    await client.connect()  # as the catalog service's client is

    fetched = await fetch_messages(client, db, "news", [album[1]])

    assert fetched.stored == [album[1]]
    stored = await db.fetch("SELECT telegram_message_id, grouped_id FROM catalog"
                            " ORDER BY telegram_message_id")
    assert [(r["telegram_message_id"], r["grouped_id"]) for r in stored] == [
        (m, 77) for m in album]
    assert before not in [r["telegram_message_id"] for r in stored] and after not in [
        r["telegram_message_id"] for r in stored]
    # a sync keeps the album's id too
    await sync_chat(settings, "news", None, client=client, conn=db, page_wait=0)
    assert await db.fetchval("SELECT grouped_id FROM catalog WHERE telegram_message_id = $1",
                             after) == 78


async def test_long_histories_are_read_in_pages(server, client, db, settings):
    news = server.add_channel("news")
    media = set()
    for n in range(230):
        if n % 3:
            server.post_text(news, f"text {n}")
        else:
            media.add(server.post_document(news, content(10, n)))

    report = await sync_chat(settings, "news", None, client=client, conn=db, page_wait=0)

    assert (report.scanned, report.added) == (230, len(media))
    assert {r["telegram_message_id"] for r in await rows(db)} == media
    assert len(server.requests(functions.messages.GetHistoryRequest)) >= 3


def message_fetches(server: TelegramServer) -> int:
    return len(server.requests(functions.channels.GetMessagesRequest)) + len(
        server.requests(functions.messages.GetMessagesRequest))


async def fetch(port: TelethonTelegram, entry: CatalogEntry, final: Path, width: int) -> bytes:
    """What the worker does with a file: resolve it, fetch its parts, commit."""
    media = await port.resolve(entry)
    file = PartFile(final, media.size, PART_SIZE)
    file.open()
    try:
        async with port.parts(media) as source:
            async def stored(nbytes: int) -> None:
                pass
            await fetch_parts(source, file, width, stored)
        file.commit()
    finally:
        file.close()
    return final.read_bytes()


async def test_synced_files_are_fetched_from_their_kept_location_without_the_message(
    server, client, db, settings, tmp_path
):
    news = server.add_channel("news")
    document = content(2 * MiB + 5000, "doc")
    photo = content(30_000, "photo")
    doc_id = server.post_document(news, document, file_name="a.bin")
    server.post_photo(news, photo)
    await sync_chat(settings, "news", None, client=client, conn=db, page_wait=0)
    entries = sorted((await get_many(db, [1, 2])).values(), key=lambda e: e.message_id)
    assert [(e.location.kind, e.location.size) for e in entries] == [
        ("document", len(document)), ("photo", len(photo))]
    port = TelethonTelegram(server.client(server.logged_in_session(), **client_options()))
    await port.start()
    try:
        asked = message_fetches(server)
        for entry, data in zip(entries, (document, photo), strict=True):
            got = await fetch(port, entry, tmp_path / f"{entry.message_id}.bin", width=8)
            assert sha256(got) == sha256(data)
        # One getFile per part and no request for either message.
        assert message_fetches(server) == asked
        assert sorted(r.request.offset for r in server.file_requests()) == [0, 0, MiB, 2 * MiB]

        # The references expire: the message is asked for once, then the file goes on
        # from the offset that was refused.
        server.file_of(news, doc_id).rotate_reference()
        before = len(server.file_requests())
        got = await fetch(port, entries[0], tmp_path / "again.bin", width=1)
    finally:
        await port.close()
    assert sha256(got) == sha256(document)
    assert message_fetches(server) == asked + 1
    assert [r.request.offset for r in server.file_requests()[before:]] == [
        0, 0, MiB, 2 * MiB]


async def test_a_private_chat_is_stored_by_its_numeric_id(server, client, db, settings):
    hidden = server.add_channel(None, title="No public name")
    server.post_photo(hidden, content(20_000, "p"))

    chat = str(hidden.marked_id)
    report = await sync_chat(settings, chat, None, client=client, conn=db, page_wait=0)

    assert report.chat == chat and report.added == 1
    # ... and the downloader finds the message again from that name.
    stored = (await rows(db))[0]
    port = TelethonTelegram(server.client(server.logged_in_session(), **client_options()))
    await port.start()
    try:
        entry = (await get_many(db, [stored["message_id"]]))[stored["message_id"]]
        media = await port.resolve(entry)
    finally:
        await port.close()
    assert (media.kind, media.size) == (MediaKind.photo, 20_000)


async def test_a_chat_reached_by_its_username_and_by_its_id_is_listed_once(
    server, client, db, settings
):
    news = server.add_channel("news")
    photo = server.post_photo(news, content(20_000, "p"))
    by_id = str(news.marked_id)
    await sync_chat(settings, "@News", None, client=client, conn=db, page_wait=0)

    # a link by id (t.me/c/...), a sync by id: the messages stored under "news"
    fetched = await fetch_messages(client, db, by_id, [photo])
    video = server.post_document(news, content(3000, "v"), file_name="clip.mp4")
    report = await sync_chat(settings, by_id, None, client=client, conn=db, page_wait=0)

    assert (fetched.chat, fetched.stored) == ("news", [photo])
    assert (report.chat, report.added, report.scanned) == ("news", 1, 1)  # went on from the mark
    assert [(r["chat"], r["telegram_message_id"]) for r in await rows(db)] == [
        ("news", photo), ("news", video)]
    # the gateway finds a message by either name of its chat
    found = await by_chat_and_id(db, [(by_id, photo), ("NEWS", video)])
    assert {k: e.telegram_message_id for k, e in found.items()} == {
        (by_id, photo): photo, ("news", video): video}

    # a chat first reached by id keeps its id as its name
    other = server.add_channel("other")
    server.post_photo(other, content(500, "o"))
    await sync_chat(settings, str(other.marked_id), None, client=client, conn=db, page_wait=0)
    again = await sync_chat(settings, "other", None, client=client, conn=db, page_wait=0)
    assert (again.chat, again.added) == (str(other.marked_id), 0)


async def test_a_chat_listed_by_username_before_names_were_kept_keeps_that_name(
    server, client, db, settings
):
    news = server.add_channel("news")
    photo = server.post_photo(news, content(20_000, "p"))
    await sync_chat(settings, "news", None, client=client, conn=db, page_wait=0)
    await db.execute("DELETE FROM chat_aliases")  # as a catalog from before the names

    fetched = await fetch_messages(client, db, str(news.marked_id), [photo])

    assert (fetched.chat, fetched.stored) == ("news", [photo])
    assert [r["chat"] for r in await rows(db)] == ["news"]


@pytest.mark.parametrize(("make", "reason"), [
    (lambda s: "no_such_channel", "does not know"),
    (lambda s: s.add_channel("secret", forbidden=True).username, "refused access"),
])
async def test_a_chat_that_cannot_be_read_is_a_clear_error(
    server, client, db, settings, make, reason
):
    chat = make(server)
    with pytest.raises(SyncError, match=reason):
        await sync_chat(settings, chat, None, client=client, conn=db, page_wait=0)
    assert await rows(db) == []


async def test_sync_with_only_telegram_settings_takes_the_database_from_the_environment(
    server, client, db, servers, isolation, monkeypatch, tmp_path: Path
):
    monkeypatch.setenv("TGDL_DATABASE_URL", servers.database_url)
    monkeypatch.setenv("TGDL_DB_SCHEMA", isolation.schema)
    news = server.add_channel("news")
    server.post_document(news, content(10, "env"))

    report = await sync_chat(TelegramSettings(session_file=tmp_path / "unused"), "news", None,
                             client=client, page_wait=0)

    assert report.added == 1 and len(await rows(db)) == 1
    assert "1 added" in str(report)


async def test_sync_needs_a_logged_in_session(server, db, settings):
    logged_out = server.client(None, **client_options())
    with pytest.raises(TelegramSetupError, match="tgdl login"):
        await sync_chat(settings, "news", None, client=logged_out, conn=db, page_wait=0)
    await logged_out.disconnect()


# --- login -----------------------------------------------------------------------------------


class Prompts:
    """Answers the login prompts in order; remembers what was asked."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.asked: list[str] = []

    def __call__(self, prompt: str) -> str:
        self.asked.append(prompt)
        return self.answers.pop(0)


async def test_login_with_two_step_verification_stores_an_owner_only_session(
    server, settings
):
    server.account.password = "correct horse"
    server.account.phone_dc = 4  # the account lives in DC 4: Telegram says PHONE_MIGRATE_4
    ask = Prompts(server.account.phone, "99999", server.account.code)  # one wrong code
    ask_secret = Prompts("wrong", "correct horse")

    path = await login(settings, ask=ask, ask_secret=ask_secret,
                       client=server.client(None, **client_options()))

    assert path == settings.session_file
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert len(ask.asked) == 3 and len(ask_secret.asked) == 2
    assert [r.dc_id for r in server.requests(functions.auth.SendCodeRequest)] == [2, 4]
    # The stored session is a logged-in account in DC 4: the downloader can use it.
    news = server.add_channel("news")
    telegram_id = server.post_document(news, content(4096, "after-login"))
    port = TelethonTelegram(build_client(settings, client_class=server.client_class()))
    await port.start()
    try:
        media = await port.resolve(CatalogEntry(message_id=1, chat="news",
                                                telegram_message_id=telegram_id))
        assert media.size == 4096
        assert {r.dc_id for r in server.requests(functions.channels.GetMessagesRequest)} == {4}
    finally:
        await port.close()

    # Logging in again with a valid session asks nothing and keeps it.
    stored = path.read_text()
    again = await login(settings, ask=Prompts(), ask_secret=Prompts(),
                        client=server.client(stored, **client_options()))
    assert again == path and path.read_text() == stored


async def test_login_without_api_credentials_names_the_variables(tmp_path: Path):
    settings = TelegramSettings(api_id=None, api_hash=None, session_file=tmp_path / "s")
    with pytest.raises(TelegramSetupError, match="TGDL_API_ID and TGDL_API_HASH"):
        await login(settings, ask=Prompts(), ask_secret=Prompts())
    assert not (tmp_path / "s").exists()


# --- watch rules with an account ------------------------------------------------------------


async def test_a_new_rule_starts_at_the_chats_newest_message_and_syncs_from_there(
    server, client, db, settings
):
    news = server.add_channel("news")
    server.post_document(news, content(3000, 1), file_name="old.pdf",
                         mime_type="application/pdf")
    newest = server.post_text(news, "the latest")
    source = TelethonSource(settings)
    source.client = client  # as start() connects it
    await client.connect()
    assert await source.resolve(db, "@News") == ("news", newest)
    with pytest.raises(SyncError, match="does not know"):
        await source.resolve(db, "no_such_channel")
    for saved in ("me", "self"):  # the account's Saved Messages: said, not a TypeError
        with pytest.raises(SyncError, match="Saved Messages are not read"):
            await source.resolve(db, saved)
        with pytest.raises(SyncError, match="Saved Messages are not read"):
            await sync_chat(settings, saved, None, client=client, conn=db, page_wait=0)
    # a flood wait on resolving a name is not "no such chat": Telegram may answer later
    server.flood_until[functions.contacts.ResolveUsernameRequest] = server.clock + 30
    with pytest.raises(TelegramBusy, match="Telegram asked to wait 30 s"):
        await source.resolve(db, "other_channel")
    server.advance(30)
    # a chat never synced is synced from that mark on, not from its first message
    later = server.post_document(news, content(4000, 2), file_name="new.pdf",
                                 mime_type="application/pdf")
    await source.refresh(db, ["news"])
    assert [(r["chat"], r["telegram_message_id"]) for r in await rows(db)] == [("news", later)]
    assert source.watching == {news.marked_id}  # whose new messages wake the service


async def test_a_sync_asked_for_after_a_rule_reads_the_history_below_its_start(
    server, client, db, settings
):
    news = server.add_channel("news")
    old = server.post_document(news, content(3000, 1), file_name="old.pdf",
                               mime_type="application/pdf")
    server.post_text(news, "the latest")
    source = TelethonSource(settings)
    source.client = client  # as start() connects it
    await client.connect()
    await source.resolve(db, "news")  # a watch rule: the chat's mark at its newest message
    new = server.post_document(news, content(4000, 2), file_name="new.pdf",
                               mime_type="application/pdf")
    await source.refresh(db, ["news"])  # the service's rounds go on from there
    assert [r["telegram_message_id"] for r in await rows(db)] == [new]
    # `tgdl sync news --limit 10`: the history the rule's start left unread, too
    report = await source.sync(db, "news", 10)
    assert (report.scanned, report.added) == (2, 1)  # the text at the start, the old file
    assert sorted(r["telegram_message_id"] for r in await rows(db)) == [old, new]
    again = await source.sync(db, "news", None)  # read now: from the mark on, as ever
    assert (again.scanned, again.added) == (0, 0)


async def test_telegrams_new_messages_with_media_wake_the_catalog_service(settings,
                                                                          monkeypatch):
    registered: list = []

    class Client:
        def add_event_handler(self, handler, event):
            registered.append((handler, event))

        async def connect(self):
            pass

        async def get_me(self):
            pass

    asked_for_updates: list[bool] = []

    def build(settings, updates=False):
        asked_for_updates.append(updates)
        return Client()

    monkeypatch.setattr("tgdl.catalog.sources.build_client", build)
    woken: list[bool] = []
    source = TelethonSource(settings)
    await source.start(lambda: woken.append(True))
    [(handler, event)] = registered
    assert asked_for_updates == [True] and isinstance(event, events.NewMessage)

    def new(chat_id: int, media: object | None) -> SimpleNamespace:
        return SimpleNamespace(chat_id=chat_id, message=SimpleNamespace(media=media))
    await handler(new(-100111, None))  # text: nothing to download
    assert woken == []
    await handler(new(-100111, object()))  # before the first round: any chat's media
    assert woken == [True]
    source.watching = {-100222}  # the first round found the watched chats' ids
    await handler(new(-100111, object()))  # a chat nobody watches
    assert woken == [True]
    await handler(new(-100222, object()))
    assert woken == [True, True]
