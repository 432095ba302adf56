"""Where the catalog's messages come from, behind one small port: the simulated Telegram,
or a real account through Telethon (whose new-message updates wake the service)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

import asyncpg
from telethon import TelegramClient, errors, events, utils

from tgdl.catalog.settings import CatalogSettings
from tgdl.catalog.simulated import SimulatedCatalog, UnknownChat
from tgdl.catalog.telethon_sync import (
    SyncError,
    TelegramBusy,
    fetch_messages,
    newest_message,
    sync_chat,
)
from tgdl.contracts.rules import FetchResult, SyncResult
from tgdl.telegram.client import build_client
from tgdl.telegram.peers import PeerResolver

log = logging.getLogger("tgdl.catalog")

__all__ = [
    "SimulatedSource",
    "Source",
    "SyncError",
    "TelegramBusy",
    "TelethonSource",
    "UnknownChat",
    "source_for",
]


class Source(Protocol):
    async def start(self, wake: Callable[[], None]) -> None:
        """Connect; call `wake` when Telegram says a message arrived somewhere."""

    async def close(self) -> None: ...

    async def sync(self, conn: asyncpg.Connection, chat: str, limit: int | None,
                   *, history: bool = True) -> SyncResult:
        """A chat's new messages into the catalog; SyncError if it cannot be read.
        `history` (asked for by a user, not by a round): also what a watch rule's
        starting point left unread below it."""

    async def fetch(self, conn: asyncpg.Connection, chat: str, ids: list[int]
                    ) -> FetchResult:
        """These messages of the chat into the catalog; SyncError if it cannot be read."""

    async def resolve(self, conn: asyncpg.Connection, chat: str) -> tuple[str, int]:
        """The chat as the catalog names it and its newest message id; UnknownChat or
        SyncError if there is no such chat for this account."""

    async def refresh(self, conn: asyncpg.Connection, chats: list[str]) -> None:
        """The new messages of these chats (the watched ones) into the catalog."""


class SimulatedSource:
    def __init__(self, sim_url: str) -> None:
        self.sim = SimulatedCatalog(sim_url)

    async def start(self, wake: Callable[[], None]) -> None:
        pass  # it sends no updates: new messages are found on the sync interval

    async def close(self) -> None:
        pass

    async def sync(self, conn: asyncpg.Connection, chat: str, limit: int | None,
                   *, history: bool = True) -> SyncResult:
        try:  # the simulated Telegram's catalog comes whole: no history left unread
            return await self.sim.sync(conn, chat)
        except UnknownChat as exc:
            raise SyncError(f"Cannot sync {chat!r}: {exc}") from None

    async def fetch(self, conn: asyncpg.Connection, chat: str, ids: list[int]
                    ) -> FetchResult:
        try:
            return await self.sim.fetch(conn, chat, ids)
        except UnknownChat as exc:
            raise SyncError(f"Cannot read {chat!r}: {exc}") from None

    async def resolve(self, conn: asyncpg.Connection, chat: str) -> tuple[str, int]:
        return await self.sim.resolve(chat)

    async def refresh(self, conn: asyncpg.Connection, chats: list[str]) -> None:
        await self.sim.refresh(conn)  # one cheap question covers every chat


class TelethonSource:
    def __init__(self, settings: CatalogSettings) -> None:
        self.settings = settings
        self.client: TelegramClient | None = None
        self._peer_ids: dict[str, int] = {}  # watched chat -> Telegram's (marked) id
        # The watched chats' ids, known after the first round (until then any chat's
        # media wakes the service): a busy chat nobody watches costs no sync.
        self.watching: set[int] | None = None

    async def start(self, wake: Callable[[], None]) -> None:
        client = build_client(self.settings, updates=True)

        async def on_new_message(event: events.NewMessage.Event) -> None:
            if event.message.media is not None and (
                    self.watching is None or event.chat_id in self.watching):
                wake()  # the sync that follows stores it, as any sync would

        client.add_event_handler(on_new_message, events.NewMessage())
        await client.connect()
        await client.get_me()  # updates flow once the account was asked something
        self.client = client

    async def close(self) -> None:
        if self.client is not None:
            await self.client.disconnect()

    async def sync(self, conn: asyncpg.Connection, chat: str, limit: int | None,
                   *, history: bool = True) -> SyncResult:
        return await sync_chat(self.settings, chat, limit, client=self.client, conn=conn,
                               history=history)

    async def fetch(self, conn: asyncpg.Connection, chat: str, ids: list[int]
                    ) -> FetchResult:
        assert self.client is not None
        return await fetch_messages(self.client, conn, chat, ids)

    async def resolve(self, conn: asyncpg.Connection, chat: str) -> tuple[str, int]:
        assert self.client is not None
        key, newest = await newest_message(self.client, conn, chat)
        # A chat never synced is synced from here on, not from its first message: its
        # history is left for a sync a user asks for.
        await conn.execute(
            "INSERT INTO chat_sync (chat, newest_telegram_id, history_unread_through)"
            " VALUES ($1, $2, $2) ON CONFLICT (chat) DO NOTHING", key, newest)
        return key, newest

    async def refresh(self, conn: asyncpg.Connection, chats: list[str]) -> None:
        for chat in chats:
            try:
                await self.sync(conn, chat, None, history=False)
                if chat not in self._peer_ids:
                    peer = await PeerResolver(self.client).input_peer(chat)
                    self._peer_ids[chat] = utils.get_peer_id(peer)
            except SyncError as exc:  # one unreadable chat does not stop the others
                log.warning("%s", exc)
            except (ValueError, errors.RPCError) as exc:  # its updates wake nobody then
                log.warning("cannot follow %r's updates: %s", chat, exc)
        self.watching = {self._peer_ids[c] for c in chats if c in self._peer_ids}


def source_for(settings: CatalogSettings) -> Source:
    if settings.telegram == "telethon":
        return TelethonSource(settings)
    return SimulatedSource(settings.sim_url)
