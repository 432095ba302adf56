"""The catalog from the simulated Telegram: its messages come with their ids (the
simulated Telegram plays the account and the sync at once), so they are stored as they
are. New messages posted to it (POST /chats/{chat}/messages) are found by asking for the
messages after the newest one stored."""

from __future__ import annotations

import asyncpg
import httpx

from tgdl.contracts.catalog import CatalogEntry
from tgdl.contracts.config import chat_key
from tgdl.contracts.rules import FetchResult, SyncResult
from tgdl.db import catalog

_TIMEOUT = httpx.Timeout(10.0, connect=5.0)


class UnknownChat(LookupError):
    """No chat of that name or id; the message says which."""


class SimulatedCatalog:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    async def _get(self, path: str, **params: int) -> list[dict]:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=_TIMEOUT) as http:
            response = await http.get(path, params=params)
            response.raise_for_status()
            return response.json()

    async def messages(self, after: int = 0) -> list[CatalogEntry]:
        """Every message with an id above `after`."""
        return [CatalogEntry.model_validate(row)
                for row in await self._get("/catalog", after=after)]

    async def refresh(self, conn: asyncpg.Connection) -> list[CatalogEntry]:
        """Store the messages newer than the newest one stored; returns them."""
        after = await conn.fetchval("SELECT COALESCE(max(message_id), 0) FROM catalog")
        entries = await self.messages(after)
        if entries:
            await catalog.upsert(conn, entries)
        return entries

    async def sync(self, conn: asyncpg.Connection, chat: str) -> SyncResult:
        key, newest = await self.resolve(chat)
        entries = [e for e in await self.messages() if e.chat == key]
        known = set(await conn.fetchval(
            "SELECT COALESCE(array_agg(message_id), '{}') FROM catalog WHERE chat = $1", key))
        await catalog.upsert(conn, entries)
        return SyncResult(chat=key, scanned=len(entries),
                          added=len({e.message_id for e in entries} - known),
                          newest_telegram_id=newest)

    async def fetch(self, conn: asyncpg.Connection, chat: str, ids: list[int]) -> FetchResult:
        """These messages of the chat into the catalog (it holds every message with media:
        the chat's are stored, as a sync would)."""
        key = (await self.sync(conn, chat)).chat
        return FetchResult(chat=key, stored=await catalog.stored_ids(conn, key, ids))

    async def resolve(self, chat: str) -> tuple[str, int]:
        """The chat as the catalog names it and its newest message id."""
        for row in await self._get("/chats"):
            if chat_key(row["chat"]) == chat_key(chat):
                return row["chat"], row["newest_telegram_id"]
        raise UnknownChat(f"the simulated Telegram has no chat {chat!r}")


async def seed(conn: asyncpg.Connection, sim_url: str) -> list[CatalogEntry]:
    """Every message of the simulated Telegram into the catalog (idempotent)."""
    entries = await SimulatedCatalog(sim_url).messages()
    await catalog.upsert(conn, entries)
    return entries
