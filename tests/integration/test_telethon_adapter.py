"""The Telethon adapter through Telethon's real client, answered by a scripted Telegram.

Only the MTProto sender is fake (see fakes/telegram_server.py): every request below went
through `TelegramClient._call`, `get_messages` and `iter_download` as in production.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fakes.telegram_server import MiB, StoredFile, TelegramServer, content, sha256
from telethon import errors
from telethon.tl import functions, types

from tgdl.contracts.catalog import CatalogEntry, MediaKind
from tgdl.contracts.errors import ErrorCode
from tgdl.downloader.telegram.port import (
    FloodWait,
    PermanentError,
    RemoteMedia,
    TelegramError,
    TransientError,
)
from tgdl.downloader.telegram.telethon import TelethonTelegram
from tgdl.telegram.client import (
    TelegramSettings,
    TelegramSetupError,
    build_client,
    client_options,
    write_session,
)
from tgdl.telegram.rpc import as_telegram_error
from tgdl.telegram.senders import open_sender

RS = TelethonTelegram.request_size
SIZE = MiB + MiB // 2  # three requests, the last one starts on the 1 MiB boundary


@pytest.fixture
def server() -> TelegramServer:
    return TelegramServer()


def adapter(server: TelegramServer, **kwargs) -> TelethonTelegram:
    client = server.client(server.logged_in_session(), **client_options())
    return TelethonTelegram(client, **kwargs)


@pytest.fixture
async def port(server: TelegramServer) -> AsyncIterator[TelethonTelegram]:
    p = adapter(server, request_timeout=5.0)
    await p.start()
    yield p
    await p.close()


def entry(chat: str, telegram_id: int, message_id: int = 1) -> CatalogEntry:
    return CatalogEntry(message_id=message_id, chat=chat, telegram_message_id=telegram_id)


async def collect(port: TelethonTelegram, media: RemoteMedia, offset: int = 0) -> list[bytes]:
    return [chunk async for chunk in port.stream(media, offset)]


async def collect_until_error(
    port: TelethonTelegram, media: RemoteMedia, offset: int = 0
) -> tuple[list[bytes], TelegramError]:
    chunks: list[bytes] = []
    with pytest.raises(TelegramError) as raised:
        async for chunk in port.stream(media, offset):
            chunks.append(chunk)
    return chunks, raised.value


def offsets(server: TelegramServer, file: StoredFile) -> list[int]:
    return [r.request.offset for r in server.file_requests(file)]


def assert_telegram_rules(server: TelegramServer) -> None:
    """upload.getFile: offset and limit multiples of 4 KiB, limit divides 1 MiB, no
    request crosses a 1 MiB boundary."""
    requests = server.file_requests()
    assert requests
    for logged in requests:
        offset, limit = logged.request.offset, logged.request.limit
        assert offset % 4096 == 0 and limit % 4096 == 0, (offset, limit)
        assert MiB % limit == 0, limit
        assert offset // MiB == (offset + limit - 1) // MiB, (offset, limit)


# --- streaming -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [SIZE, MiB + 12_345])  # whole requests, a short last one
async def test_streams_a_document_across_a_1mib_boundary(server, port, size):
    news = server.add_channel("news")
    data = content(size, "doc")
    telegram_id = server.post_document(news, data, file_name="report 2026.pdf",
                                       mime_type="application/pdf")
    media = await port.resolve(entry("news", telegram_id))
    assert (media.kind, media.size, media.file_name, media.mime_type) == (
        MediaKind.document, size, "report 2026.pdf", "application/pdf")

    chunks = await collect(port, media)

    assert sha256(b"".join(chunks)) == sha256(data)
    assert all(len(c) <= RS for c in chunks)
    file = server.file_of(news, telegram_id)
    assert offsets(server, file) == [0, RS, 2 * RS]  # nothing requested twice or past the end
    assert_telegram_rules(server)
    assert port.serving() == 0


async def test_a_file_of_whole_requests_ends_without_asking_past_its_end(server, port):
    news = server.add_channel("news")
    data = content(MiB, "exact")
    telegram_id = server.post_document(news, data)
    media = await port.resolve(entry("news", telegram_id))

    assert sha256(b"".join(await collect(port, media))) == sha256(data)
    assert offsets(server, server.file_of(news, telegram_id)) == [0, RS]


async def test_resume_continues_at_the_offset_and_requests_nothing_before_it(server, port):
    news = server.add_channel("news")
    data = content(SIZE, "resume")
    telegram_id = server.post_document(news, data)
    media = await port.resolve(entry("news", telegram_id))

    tail = b"".join(await collect(port, media, offset=2 * RS))

    assert tail == data[2 * RS:]
    assert offsets(server, server.file_of(news, telegram_id)) == [2 * RS]
    with pytest.raises(ValueError):
        await collect(port, media, offset=1000)  # not a multiple of request_size


async def test_photo_downloads_its_largest_size_not_the_last_listed(server, port):
    news = server.add_channel("news")
    data = content(300_000, "photo")
    telegram_id = server.post_photo(news, data)
    media = await port.resolve(entry("news", telegram_id))

    assert (media.kind, media.size, media.mime_type) == (MediaKind.photo, len(data), "image/jpeg")
    assert b"".join(await collect(port, media)) == data
    requested = server.file_requests(server.file_of(news, telegram_id))
    assert {r.request.location.thumb_size for r in requested} == {"y"}


@pytest.mark.parametrize(
    ("attributes", "mime_type", "kind"),
    [
        ([types.DocumentAttributeVideo(duration=3, w=640, h=360)], "video/mp4", MediaKind.video),
        ([types.DocumentAttributeAudio(duration=3, title="Song")], "audio/mpeg", MediaKind.audio),
        ([types.DocumentAttributeAudio(duration=3, voice=True)], "audio/ogg", MediaKind.voice),
        ([], "video/quicktime", MediaKind.video),
        ([], "application/zip", MediaKind.document),
    ],
)
async def test_resolve_tells_the_kind_from_attributes_and_mime_type(
    server, port, attributes, mime_type, kind
):
    news = server.add_channel("news")
    telegram_id = server.post_document(news, content(10_000, kind), attributes=attributes,
                                       mime_type=mime_type)
    media = await port.resolve(entry("news", telegram_id))
    assert media.kind is kind
    assert media.mime_type == mime_type


# --- data centers ----------------------------------------------------------------------------


async def test_file_announced_in_another_dc_uses_an_exported_sender(server, port):
    news = server.add_channel("news")
    data = content(SIZE, "dc4")
    telegram_id = server.post_document(news, data, stored_dc=4)
    media = await port.resolve(entry("news", telegram_id))
    assert media.dc_id == 4

    assert sha256(b"".join(await collect(port, media))) == sha256(data)
    file = server.file_of(news, telegram_id)
    assert {r.dc_id for r in server.file_requests(file)} == {4}
    assert [r.dc_id for r in server.requests(functions.auth.ImportAuthorizationRequest)] == [4]
    assert_borrowed_senders_returned(port)


async def test_file_migrate_moves_the_download_to_the_file_dc(server, port):
    news = server.add_channel("news")
    data = content(SIZE, "migrate")
    # The document says DC 2 (our home) but its bytes live in DC 4: FILE_MIGRATE_4.
    telegram_id = server.post_document(news, data, stored_dc=4, announced_dc=2)
    media = await port.resolve(entry("news", telegram_id))

    assert sha256(b"".join(await collect(port, media))) == sha256(data)
    requests = server.file_requests(server.file_of(news, telegram_id))
    assert [(r.dc_id, r.request.offset) for r in requests] == [
        (2, 0), (4, 0), (4, RS), (4, 2 * RS)]
    assert_telegram_rules(server)
    assert_borrowed_senders_returned(port)


async def test_a_failure_mid_file_still_returns_the_borrowed_sender(server, port):
    news = server.add_channel("news")
    telegram_id = server.post_document(news, content(SIZE, "dc4-flood"), stored_dc=4)
    media = await port.resolve(entry("news", telegram_id))
    server.fail_file_at(RS, "FLOOD_WAIT_30", code=420)

    chunks, error = await collect_until_error(port, media)

    assert isinstance(error, FloodWait) and len(chunks) == 1
    assert_borrowed_senders_returned(port)


def assert_borrowed_senders_returned(port: TelethonTelegram) -> None:
    # Telethon's bookkeeping of exported senders: each borrow must have been returned.
    states = [state for state, _ in port.client._borrowed_senders.values()]
    assert states and all(state._n == 0 for state in states)


# --- flood waits -----------------------------------------------------------------------------


async def test_flood_wait_mid_file_surfaces_with_its_seconds(server, port):
    news = server.add_channel("news")
    data = content(SIZE, "flood")
    telegram_id = server.post_document(news, data)
    media = await port.resolve(entry("news", telegram_id))
    server.fail_file_at(RS, "FLOOD_WAIT_42", code=420)

    chunks, error = await collect_until_error(port, media)

    assert isinstance(error, FloodWait) and error.seconds == 42
    assert b"".join(chunks) == data[:RS]
    assert port.serving() == 0
    server.advance(30)  # retrying before the wait is over: Telegram says what is left
    _, again = await collect_until_error(port, media, offset=RS)
    assert isinstance(again, FloodWait) and again.seconds == 12


async def test_after_a_flood_wait_the_download_resumes_where_it_stopped(server, port):
    news = server.add_channel("news")
    data = content(SIZE, "flood-resume")
    telegram_id = server.post_document(news, data)
    server.fail_file_at(RS, "FLOOD_PREMIUM_WAIT_7", code=420)
    media = await port.resolve(entry("news", telegram_id))
    head, error = await collect_until_error(port, media)
    assert isinstance(error, FloodWait) and error.seconds == 7

    server.advance(7)  # the worker sat the wait out
    tail = await collect(port, await port.resolve(entry("news", telegram_id)), offset=RS)

    assert sha256(b"".join(head + tail)) == sha256(data)
    assert offsets(server, server.file_of(news, telegram_id)) == [0, RS, RS, 2 * RS]


# --- file references -------------------------------------------------------------------------


async def test_expired_reference_is_refreshed_and_the_download_continues(server, port):
    news = server.add_channel("news")
    data = content(SIZE, "reference")
    telegram_id = server.post_document(news, data)
    media = await port.resolve(entry("news", telegram_id))
    file = server.file_of(news, telegram_id)
    old_reference = file.reference
    server.expire_reference_at(RS)

    chunks = await collect(port, media)

    assert sha256(b"".join(chunks)) == sha256(data)
    requests = server.file_requests(file)
    assert [r.request.offset for r in requests] == [0, RS, RS, 2 * RS]  # 0 only once
    assert [r.request.location.file_reference == old_reference for r in requests] == [
        True, True, False, False]
    assert requests[-1].request.location.file_reference == file.reference
    refetches = server.requests(functions.channels.GetMessagesRequest)
    assert len(refetches) == 2  # resolve, then the refresh
    assert_telegram_rules(server)


async def test_a_reference_that_keeps_expiring_ends_as_transient(server):
    port = adapter(server, max_reference_refreshes=2)
    await port.start()
    try:
        news = server.add_channel("news")
        telegram_id = server.post_document(news, content(SIZE, "expiring"))
        media = await port.resolve(entry("news", telegram_id))
        for _ in range(3):
            server.expire_reference_at(RS)

        chunks, error = await collect_until_error(port, media)
    finally:
        await port.close()

    assert isinstance(error, TransientError)
    assert len(chunks) == 1


async def test_media_replaced_during_the_download_is_permanent(server, port):
    news = server.add_channel("news")
    telegram_id = server.post_document(news, content(SIZE, "before"))
    media = await port.resolve(entry("news", telegram_id))
    stream = port.stream(media, 0)
    try:
        await anext(stream)
        # The message is edited to carry another file; the old reference dies with it.
        old = server.file_of(news, telegram_id)
        old.rotate_reference()
        server.post_document(news, content(SIZE, "after"))
        news.messages[telegram_id].file = server.file_of(news, max(news.messages))
        with pytest.raises(PermanentError) as raised:
            await anext(stream)
    finally:
        await stream.aclose()
    assert raised.value.failure.error is ErrorCode.size_mismatch


# --- transient failures ----------------------------------------------------------------------


async def test_a_request_that_never_answers_times_out_as_transient(server):
    port = adapter(server, request_timeout=0.3)
    await port.start()
    try:
        news = server.add_channel("news")
        data = content(SIZE, "hang")
        telegram_id = server.post_document(news, data)
        media = await port.resolve(entry("news", telegram_id))
        server.hang_file_at(RS)

        chunks, error = await collect_until_error(port, media)
    finally:
        await port.close()

    assert isinstance(error, TransientError)
    assert b"".join(chunks) == data[:RS]


async def test_a_dropped_connection_is_transient(server, port):
    news = server.add_channel("news")
    telegram_id = server.post_document(news, content(SIZE, "drop"))
    media = await port.resolve(entry("news", telegram_id))
    server.drop_connection_at(0)

    chunks, error = await collect_until_error(port, media)

    assert isinstance(error, TransientError) and chunks == []


# --- messages that cannot be downloaded ------------------------------------------------------


async def test_deleted_message_is_permanent(server, port):
    news = server.add_channel("news")
    telegram_id = server.post_document(news, content(1000, "gone"))
    server.delete(news, telegram_id)

    with pytest.raises(PermanentError) as raised:
        await port.resolve(entry("news", telegram_id))
    assert raised.value.failure.error is ErrorCode.message_deleted


async def test_text_message_has_no_media(server, port):
    news = server.add_channel("news")
    telegram_id = server.post_text(news, "just words")

    with pytest.raises(PermanentError) as raised:
        await port.resolve(entry("news", telegram_id))
    assert raised.value.failure.error is ErrorCode.no_media


async def test_private_channel_is_access_denied(server, port):
    secret = server.add_channel("secret", forbidden=True)
    telegram_id = server.post_document(secret, content(1000, "secret"))

    with pytest.raises(PermanentError) as raised:
        await port.resolve(entry("secret", telegram_id))
    assert raised.value.failure.error is ErrorCode.access_denied
    assert "CHANNEL_PRIVATE" in raised.value.failure.detail


@pytest.mark.parametrize("chat", ["nobody_has_this_name", "-1000000009999"])
async def test_unknown_chat_is_message_not_found(server, port, chat):
    server.add_channel("news")
    with pytest.raises(PermanentError) as raised:
        await port.resolve(entry(chat, 1))
    assert raised.value.failure.error is ErrorCode.message_not_found


async def test_numeric_chat_ids_resolve_through_the_dialogs_once(server, port):
    hidden = server.add_channel(None, title="No public name")
    first = server.post_document(hidden, content(5000, "a"))
    second = server.post_document(hidden, content(6000, "b"))

    for telegram_id in (first, second):
        media = await port.resolve(entry(str(hidden.marked_id), telegram_id))
        assert media.size in (5000, 6000)
    assert len(server.requests(functions.messages.GetDialogsRequest)) == 1


# --- setup -----------------------------------------------------------------------------------


async def test_built_from_settings_with_the_stored_session(server, tmp_path: Path):
    settings = TelegramSettings(api_id=12345, api_hash="0" * 32,
                                session_file=tmp_path / "tg" / "telegram.session")
    write_session(settings.session_file, server.logged_in_session())
    news = server.add_channel("news")
    telegram_id = server.post_document(news, content(4096, "settings"))

    port = TelethonTelegram(build_client(settings, client_class=server.client_class()))
    await port.start()
    try:
        assert (await port.resolve(entry("news", telegram_id))).size == 4096
        assert port.client.flood_sleep_threshold == 0  # every flood wait reaches the worker
    finally:
        await port.close()


async def test_setup_errors_say_what_to_do(server, tmp_path: Path):
    with pytest.raises(TelegramSetupError, match="TGDL_API_ID and TGDL_API_HASH"):
        build_client(TelegramSettings(api_id=None, api_hash=None))
    with pytest.raises(TelegramSetupError, match="tgdl login"):
        build_client(TelegramSettings(api_id=1, api_hash="x",
                                      session_file=tmp_path / "missing.session"))
    logged_out = TelethonTelegram(server.client(None, **client_options()))
    with pytest.raises(TelegramSetupError, match="tgdl login"):
        await logged_out.start()
    await logged_out.close()


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (errors.FloodWaitError(request=None, capture=30), FloodWait),
        (errors.FloodPremiumWaitError(request=None, capture=5), FloodWait),
        (errors.FloodTestPhoneWaitError(request=None, capture=9), FloodWait),
        (errors.RpcCallFailError(request=None), TransientError),
        (errors.ServerError(request=None, message="INTERNAL", code=500), TransientError),
        (errors.TimedOutError(request=None, message="Timeout", code=-503), TransientError),
        (ConnectionError("reset"), TransientError),
        (TimeoutError(), TransientError),
        (errors.ChatAdminRequiredError(request=None), ErrorCode.access_denied),
        (errors.UserBannedInChannelError(request=None), ErrorCode.access_denied),
        (errors.ChatForbiddenError(request=None), ErrorCode.access_denied),
        (errors.AuthKeyUnregisteredError(request=None), ErrorCode.access_denied),
        (errors.AuthKeyDuplicatedError(request=None), ErrorCode.access_denied),
        (errors.UsernameInvalidError(request=None), ErrorCode.message_not_found),
        (errors.FileIdInvalidError(request=None), ErrorCode.message_deleted),
        (errors.LimitInvalidError(request=None), ErrorCode.internal),
    ],
)
def test_error_classification(error, expected):
    result = as_telegram_error(error, resolving=False)
    if isinstance(expected, ErrorCode):
        assert isinstance(result, PermanentError) and result.failure.error is expected
    else:
        assert type(result) is expected
    if isinstance(result, FloodWait):
        assert result.seconds == error.seconds


async def test_a_connection_telegram_refuses_to_set_up_is_closed_not_left_open(server, monkeypatch):
    """The pool's extra connections start with initConnection; refused (a flood wait),
    the connection must not stay open with nobody to use or close it."""
    client = server.client(server.logged_in_session(), **client_options())
    await client.connect()
    opened: list = []
    sender_class = type(client._sender)
    connect = sender_class.connect

    async def recorded(self, connection):
        opened.append(self)
        return await connect(self, connection)
    monkeypatch.setattr(sender_class, "connect", recorded)
    server.flood_until[functions.help.GetConfigRequest] = server.clock + 30
    try:
        with pytest.raises(errors.FloodWaitError):
            await open_sender(client, client.session.dc_id)
    finally:
        await client.disconnect()
    assert opened and not any(s.is_connected() for s in opened)
