"""A chat's media into the catalog through a real account (Telethon).

`sync_chat` reads a chat's history through the account (`tgdl.telegram`) and adds the
messages that carry media to the catalog, allocating our own stable message ids; it
continues where the previous sync stopped. `newest_message` is where a new watch rule
starts looking. `login` (`tgdl login`) lives with the account in `tgdl.telegram`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import asyncpg
from telethon import TelegramClient, errors, utils
from telethon.tl import types

from tgdl.contracts.catalog import CatalogEntry
from tgdl.contracts.config import CommonSettings
from tgdl.contracts.rules import FetchResult, SyncResult
from tgdl.db import catalog
from tgdl.db.connection import connect
from tgdl.telegram.client import TelegramSettings, TelegramSetupError, build_client
from tgdl.telegram.errors import FloodWait, TransientError
from tgdl.telegram.media import describe_media, location_of
from tgdl.telegram.peers import PeerResolver, catalog_chat
from tgdl.telegram.rpc import as_telegram_error

log = logging.getLogger("tgdl.catalog")

PAGE = 100  # messages per write; Telethon fetches history 100 at a time too
_ID_LOCK = "tgdl-catalog-message-ids"  # serializes id allocation between syncs
# A sync is a one-off command nobody waits on closely: sit out flood waits up to this long
# (Telethon sleeps them inside the request) rather than fail halfway.
SYNC_FLOOD_SLEEP = 300


class SyncError(RuntimeError):
    """The chat cannot be synced (unknown, no access); the message says why."""


# --- sync ------------------------------------------------------------------------------------


async def sync_chat(
    settings: TelegramSettings,
    chat: str,
    limit: int | None,
    client: TelegramClient | None = None,
    conn: asyncpg.Connection | None = None,
    *,
    page_wait: float | None = None,
    history: bool = True,
) -> SyncResult:
    """Add the chat's media messages to the catalog (`settings`: CatalogSettings, or
    TelegramSettings with the database taken from the environment).

    First sync with a `limit`: the newest `limit` messages. Otherwise every message newer
    than the last sync, oldest first and committed page by page, so an interrupted or
    limited run leaves no gap: the next run continues right after what was stored.
    `page_wait`: seconds between history requests (None: Telethon's pacing, which waits
    1 s per page on long histories to stay clear of flood limits).
    `history`: a chat first reached by a watch rule has its history read too, as a
    first sync reads it (the rule's start left it unread); the service's own rounds pass
    False and go on from the mark (a rule's chat is not read whole).
    """
    own_client = client is None
    if client is None:
        client = build_client(settings)
    own_conn = conn is None
    if conn is None:
        # The database comes from CatalogSettings, or from TGDL_* when only the Telegram
        # settings were given.
        db = settings if isinstance(settings, CommonSettings) else CommonSettings()
        conn = await connect(db.database_url, db.db_schema)
    try:
        with patient(client):
            if not client.is_connected():
                await client.connect()
            if not await client.is_user_authorized():
                raise TelegramSetupError(
                    "The Telegram session is not logged in: run `tgdl login`.")
            return await _sync(client, conn, chat, limit, page_wait, history)
    finally:
        if own_conn:
            await conn.close()
        if own_client:
            await client.disconnect()


@contextlib.contextmanager
def patient(client: TelegramClient) -> Iterator[None]:
    """Telethon sleeps through flood waits up to SYNC_FLOOD_SLEEP while any sync runs on
    this client (a sync of a long history meets them): counted, so syncs that overlap
    (a command's and a round's) leave the client's own threshold as they found it,
    whichever ends last."""
    running = getattr(client, "_tgdl_syncs", 0)
    if running == 0:
        client._tgdl_threshold = client.flood_sleep_threshold
        client.flood_sleep_threshold = SYNC_FLOOD_SLEEP
    client._tgdl_syncs = running + 1
    try:
        yield
    finally:
        client._tgdl_syncs -= 1
        if client._tgdl_syncs == 0:
            client.flood_sleep_threshold = client._tgdl_threshold


class TelegramBusy(Exception):
    """Telegram did not answer now (a flood wait, a hiccup); the message says why."""


async def catalog_name(client: TelegramClient, conn: asyncpg.Connection, chat: str,
                       peer: Any) -> str:
    """The name the catalog stores the chat's messages under: the first one the chat was
    reached by, its username or its id, whichever way it is reached later (so its
    messages are neither listed nor downloaded twice). A chat given by id that was never
    named asks Telegram once for its username: a catalog from before names were kept
    may list it under that."""
    peer_id = utils.get_peer_id(peer)
    given, by_id = catalog_chat(chat, peer), str(peer_id)
    names = [given, by_id]
    if given == by_id and await catalog.chat_of_peer(conn, peer_id) is None:
        names += await _username(client, peer)
    return await catalog.name_chat(conn, peer_id, names)


async def _username(client: TelegramClient, peer: Any) -> list[str]:
    try:
        username = getattr(await client.get_entity(peer), "username", None)
    except (ValueError, errors.RPCError):  # only a catalog from before names were kept
        return []                          # could want it: name the chat by its id
    return [username.lower()] if username else []


async def _chat_peer(client: TelegramClient, chat: str) -> Any:
    """The chat's peer; SyncError for the account's own Saved Messages (`me`), which
    the catalog does not read: it names chats by username or id."""
    peer = await PeerResolver(client).input_peer(chat)
    if isinstance(peer, types.InputPeerSelf):
        raise SyncError(f"Cannot sync {chat!r}: the account's Saved Messages are not read; "
                        "give a channel, group or user by its username or id")
    return peer


def _unanswered(chat: str, exc: Exception) -> SyncError | TelegramBusy:
    """Why Telegram gave no answer about `chat`: it may later (a flood wait, a hiccup),
    or the account cannot read the chat."""
    reason = as_telegram_error(exc, resolving=True)
    if isinstance(reason, FloodWait | TransientError):
        return TelegramBusy(f"Telegram cannot answer about {chat!r} now: {reason}")
    return _cannot_read(chat, exc)


def _cannot_read(chat: str, exc: Exception) -> SyncError:
    reason = as_telegram_error(exc, resolving=True)
    return SyncError(f"Cannot sync {chat!r}: {reason}")


async def _sync(
    client: TelegramClient, conn: asyncpg.Connection, chat: str, limit: int | None,
    page_wait: float | None, history: bool,
) -> SyncResult:
    try:
        peer = await _chat_peer(client, chat)
    except (ValueError, errors.RPCError) as exc:
        raise _cannot_read(chat, exc) from exc
    key = await catalog_name(client, conn, chat, peer)
    mark = await conn.fetchrow(
        "SELECT newest_telegram_id, history_unread_through FROM chat_sync WHERE chat = $1", key)
    newest = mark["newest_telegram_id"] if mark else None
    unread = mark["history_unread_through"] if mark else None
    early = (await _read_history(client, conn, chat, key, peer, unread, limit, page_wait)
             if history and unread is not None else (0, 0))
    latest_only = newest is None and limit is not None
    if latest_only:
        messages = client.iter_messages(peer, limit=limit, wait_time=page_wait)  # newest first
    else:
        messages = client.iter_messages(peer, limit=limit, min_id=newest or 0, reverse=True,
                                        wait_time=page_wait)

    scanned = added = 0
    top = newest or 0
    page: list[Any] = []

    async def flush() -> None:
        nonlocal added, page
        # `latest_only` writes its mark at the end: it reads newest first, so a mark
        # written halfway would hide the older messages it has not stored yet.
        added += await _store(conn, key, page, None if latest_only else top)
        page = []

    try:
        async for message in messages:
            scanned += 1
            top = max(top, message.id)
            page.append(message)
            if len(page) >= PAGE:
                await flush()
    except errors.RPCError as exc:
        raise _cannot_read(chat, exc) from exc  # what was stored so far stays stored
    await flush()
    if latest_only and scanned:
        await _store(conn, key, [], top)
    scanned, added = scanned + early[0], added + early[1]
    log.info("synced %s: %d messages read, %d added, newest %d", key, scanned, added, top)
    return SyncResult(chat=key, scanned=scanned, added=added, newest_telegram_id=top)


async def _read_history(client: TelegramClient, conn: asyncpg.Connection, chat: str,
                        key: str, peer: Any, through: int, limit: int | None,
                        page_wait: float | None) -> tuple[int, int]:
    """The history a watch rule's start left unread (messages up to `through`), as a
    first sync reads it: the newest `limit` of them, or all. Returns (read, added)."""
    scanned = added = 0
    page: list[Any] = []
    try:
        async for message in client.iter_messages(peer, limit=limit, max_id=through + 1,
                                                  wait_time=page_wait):  # newest first
            scanned += 1
            page.append(message)
            if len(page) >= PAGE:
                added += await _store(conn, key, page, None)
                page = []
    except errors.RPCError as exc:
        raise _cannot_read(chat, exc) from exc  # what was stored so far stays stored
    added += await _store(conn, key, page, None)
    await conn.execute("UPDATE chat_sync SET history_unread_through = NULL WHERE chat = $1",
                       key)
    return scanned, added


async def _store(
    conn: asyncpg.Connection, chat: str, messages: Sequence[Any], newest: int | None
) -> int:
    """Upsert the media messages of one page and advance the chat's mark, atomically.
    Existing rows keep their message_id; new ones get max(message_id) + 1, ... under a
    lock, so ids stay unique and stable across chats and concurrent syncs."""
    with_media = [
        (m, info) for m in messages
        if not isinstance(m, types.MessageService)  # joins, pins, ...: nothing to download
        and (info := describe_media(m.media)) is not None
    ]
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", _ID_LOCK)
        known = {
            r["telegram_message_id"]: r["message_id"]
            for r in await conn.fetch(
                "SELECT telegram_message_id, message_id FROM catalog"
                " WHERE chat = $1 AND telegram_message_id = ANY($2::bigint[])",
                chat, [m.id for m, _ in with_media],
            )
        }
        next_id = await conn.fetchval("SELECT COALESCE(max(message_id), 0) + 1 FROM catalog")
        entries = []
        for message, info in sorted(with_media, key=lambda pair: pair[0].id):
            message_id = known.get(message.id)
            if message_id is None:
                message_id, next_id = next_id, next_id + 1
            entries.append(CatalogEntry(
                message_id=message_id, chat=chat, telegram_message_id=message.id,
                media_kind=info.kind, file_name=info.file_name, mime_type=info.mime_type,
                size=info.size, date=message.date, caption=message.message or None,
                location=location_of(info), grouped_id=message.grouped_id,
            ))
        if entries:
            await catalog.upsert(conn, entries)
        if newest is not None:
            await conn.execute(
                """INSERT INTO chat_sync (chat, newest_telegram_id) VALUES ($1, $2)
                   ON CONFLICT (chat) DO UPDATE SET
                     newest_telegram_id = GREATEST(chat_sync.newest_telegram_id,
                                                   EXCLUDED.newest_telegram_id),
                     synced_at = now()""",
                chat, newest,
            )
    return len(with_media) - len(known)


ALBUM = 10  # messages an album holds at most


async def fetch_messages(client: TelegramClient, conn: asyncpg.Connection, chat: str,
                         ids: Sequence[int]) -> FetchResult:
    """These messages of the chat into the catalog (those with media), without moving
    the chat's sync mark; SyncError when the account cannot read the chat."""
    try:
        peer = await _chat_peer(client, chat)
        messages = [m for m in await client.get_messages(peer, ids=list(ids))
                    if m is not None]  # None: no such message (deleted)
        # An album's messages have neighbouring ids (at most 10 of them): its others too.
        near = sorted({n for m in messages if m.grouped_id is not None
                       for n in range(max(1, m.id - ALBUM + 1), m.id + ALBUM)} - set(ids))
        if near:
            grouped = {m.grouped_id for m in messages if m.grouped_id is not None}
            messages += [m for m in await client.get_messages(peer, ids=near)
                         if m is not None and m.grouped_id in grouped]
    except (ValueError, errors.RPCError) as exc:
        raise _unanswered(chat, exc) from exc
    key = await catalog_name(client, conn, chat, peer)
    await _store(conn, key, messages, None)
    return FetchResult(chat=key, stored=await catalog.stored_ids(conn, key, ids))


async def newest_message(client: TelegramClient, conn: asyncpg.Connection, chat: str
                         ) -> tuple[str, int]:
    """The chat as the catalog names it and its newest message id (0: an empty chat);
    SyncError when the account cannot read it, TelegramBusy when Telegram cannot answer
    now (a flood wait: resolving usernames is tightly limited)."""
    try:
        peer = await _chat_peer(client, chat)
        latest = await client.get_messages(peer, limit=1)
    except (ValueError, errors.RPCError) as exc:
        raise _unanswered(chat, exc) from exc
    return await catalog_name(client, conn, chat, peer), (latest[0].id if latest else 0)
