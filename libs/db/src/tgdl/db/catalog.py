"""The message catalog: looked up by the orchestrator, listed by the gateway, filled by
the catalog service (the simulated Telegram's seed, `tgdl sync`, watched chats)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import asyncpg

from tgdl.contracts.catalog import CatalogEntry, FileLocation
from tgdl.contracts.config import chat_key

_COLUMNS = (
    "message_id, chat, telegram_message_id, media_kind, file_name, mime_type, size, date,"
    " caption, location, grouped_id"
)


def _entry(row: asyncpg.Record) -> CatalogEntry:
    fields = dict(row)
    location = fields.pop("location")  # asyncpg hands JSONB over as its text
    if location is not None:
        fields["location"] = FileLocation.model_validate_json(location)
    return CatalogEntry.model_validate(fields)


async def upsert(conn: asyncpg.Connection, entries: Iterable[CatalogEntry]) -> int:
    rows = [
        (
            e.message_id, e.chat, e.telegram_message_id,
            e.media_kind.value if e.media_kind else None,
            e.file_name, e.mime_type, e.size, e.date, e.caption,
            e.location.model_dump_json() if e.location else None, e.grouped_id,
        )
        for e in entries
    ]
    await conn.executemany(
        f"""INSERT INTO catalog ({_COLUMNS})
            VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10::jsonb,$11)
            ON CONFLICT (message_id) DO UPDATE SET
              chat = EXCLUDED.chat, telegram_message_id = EXCLUDED.telegram_message_id,
              media_kind = EXCLUDED.media_kind, file_name = EXCLUDED.file_name,
              mime_type = EXCLUDED.mime_type, size = EXCLUDED.size, date = EXCLUDED.date,
              caption = EXCLUDED.caption, location = EXCLUDED.location,
              grouped_id = EXCLUDED.grouped_id, synced_at = now()""",
        rows,
    )
    return len(rows)


async def get_many(conn: asyncpg.Connection, ids: Sequence[int]) -> dict[int, CatalogEntry]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM catalog WHERE message_id = ANY($1::bigint[])", list(ids)
    )
    return {r["message_id"]: _entry(r) for r in rows}


def chat_key_sql(column: str) -> str:
    """`column` as tgdl.contracts.config.chat_key() compares chats, in SQL."""
    return f"lower(regexp_replace(btrim({column}), '^@', ''))"


async def by_chat_and_id(conn: asyncpg.Connection, wanted: Sequence[tuple[str, int]]
                         ) -> dict[tuple[str, int], CatalogEntry]:
    """The entries of (chat, Telegram message id) pairs, keyed by the pair with its chat
    as chat_key() names it (a username in any case, with or without @). A chat is found
    by any name it was reached by (its username or its id: `chat_aliases`)."""
    if not wanted:
        return {}
    asked = sorted({chat_key(chat) for chat, _ in wanted})
    stored_as = {r["alias"]: chat_key(r["chat"]) for r in await conn.fetch(
        "SELECT alias, chat FROM chat_aliases WHERE alias = ANY($1::text[])", asked)}
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM catalog WHERE telegram_message_id = ANY($1::bigint[])"
        f" AND {chat_key_sql('chat')} = ANY($2::text[])",
        sorted({m for _, m in wanted}), sorted({stored_as.get(k, k) for k in asked}))
    stored = {(chat_key(e.chat), e.telegram_message_id): e for e in map(_entry, rows)}
    found: dict[tuple[str, int], CatalogEntry] = {}
    for chat, m in wanted:
        key = chat_key(chat)
        entry = stored.get((stored_as.get(key, key), m))
        if entry is not None:
            found[(key, m)] = entry
    return found


async def chat_of_peer(conn: asyncpg.Connection, peer_id: int) -> str | None:
    """The name the catalog stores Telegram chat `peer_id`'s messages under, if named."""
    return await conn.fetchval(
        "SELECT chat FROM chat_aliases WHERE peer_id = $1 LIMIT 1", peer_id)


async def name_chat(conn: asyncpg.Connection, peer_id: int, names: Sequence[str]) -> str:
    """The name the catalog stores the messages of Telegram chat `peer_id` under, with
    `names` (those it was just reached by) recorded as that chat's. A chat named before
    keeps its name; otherwise the first of `names` the catalog already lists messages or
    a sync mark under (a catalog from before names were kept), else the first."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('tgdl-chat-names'))")
        name = await chat_of_peer(conn, peer_id)
        if name is None:
            listed = {r["chat"] for r in await conn.fetch(
                "SELECT chat FROM catalog WHERE chat = ANY($1::text[])"
                " UNION SELECT chat FROM chat_sync WHERE chat = ANY($1::text[])",
                list(names))}
            name = next((n for n in names if n in listed), names[0])
        await conn.executemany(
            "INSERT INTO chat_aliases (alias, peer_id, chat) VALUES ($1, $2, $3)"
            " ON CONFLICT (alias) DO UPDATE SET peer_id = $2, chat = $3"
            " WHERE chat_aliases.peer_id <> $2 OR chat_aliases.chat <> $3",
            [(chat_key(n), peer_id, name) for n in dict.fromkeys(names)])
    return name


async def every_name(conn: Any, chats: frozenset[str] | None) -> frozenset[str] | None:
    """`chats` (chat_key()s) with every other name of the same Telegram chats: a chat a
    token or the allow-list names by one name is readable by the others too (None: any
    chat)."""
    if not chats:
        return chats
    rows = await conn.fetch(
        "SELECT alias FROM chat_aliases WHERE peer_id IN"
        " (SELECT peer_id FROM chat_aliases WHERE alias = ANY($1::text[]))", sorted(chats))
    return chats | {r["alias"] for r in rows}


async def stored_ids(conn: asyncpg.Connection, chat: str, ids: Sequence[int]) -> list[int]:
    """Which of these Telegram message ids of `chat` (as the catalog names it) it holds."""
    rows = await conn.fetch(
        "SELECT telegram_message_id FROM catalog WHERE chat = $1"
        " AND telegram_message_id = ANY($2::bigint[])", chat, list(ids))
    return sorted(r["telegram_message_id"] for r in rows)


async def albums(conn: asyncpg.Connection, entries: Iterable[CatalogEntry]
                 ) -> dict[tuple[str, int], list[int]]:
    """The message ids of each album among `entries` (by chat and grouped_id), in the
    order of the chat."""
    groups = {(e.chat, e.grouped_id) for e in entries if e.grouped_id is not None}
    if not groups:
        return {}
    rows = await conn.fetch(
        "SELECT c.chat, c.grouped_id, c.message_id FROM catalog c"
        " JOIN unnest($1::text[], $2::bigint[]) AS g(chat, grouped_id)"
        " ON c.chat = g.chat AND c.grouped_id = g.grouped_id"
        " ORDER BY c.telegram_message_id",
        [chat for chat, _ in groups], [g for _, g in groups])
    found: dict[tuple[str, int], list[int]] = {}
    for r in rows:
        found.setdefault((r["chat"], r["grouped_id"]), []).append(r["message_id"])
    return found


async def entries_of(conn: asyncpg.Connection, where: str, *args: Any) -> list[CatalogEntry]:
    """The rows `where` (an SQL condition over the catalog, with $n parameters) selects."""
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM catalog WHERE {where}", *args)
    return [_entry(r) for r in rows]


@dataclass(frozen=True)
class MessageFilter:
    """What the message list may be narrowed to; every field is optional (None: any)."""

    media_only: bool = False
    chat: str | None = None
    media_kinds: tuple[str, ...] = ()
    min_size: int | None = None
    max_size: int | None = None
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive
    text: str | None = None  # in the file name or the caption, case-insensitive
    chats: frozenset[str] | None = None  # the allow-list's chat_key()s; None: every chat

    def where(self) -> tuple[str, list[Any]]:
        """The WHERE clause (empty when nothing narrows) and its parameters ($1...)."""
        clauses: list[str] = []
        args: list[Any] = []

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        if self.media_only:
            clauses.append("media_kind IS NOT NULL")
        if self.chat is not None:
            # by any name of the chat: as listed, as chat_key() writes it, or an alias
            names = arg(sorted({self.chat, chat_key(self.chat)}))
            clauses.append(f"chat IN (SELECT unnest({names}::text[]) UNION SELECT chat"
                           f" FROM chat_aliases WHERE alias = {arg(chat_key(self.chat))})")
        if self.chats is not None:
            clauses.append(f"{chat_key_sql('chat')} = ANY({arg(sorted(self.chats))}::text[])")
        if self.media_kinds:
            clauses.append(f"media_kind = ANY({arg(list(self.media_kinds))}::text[])")
        if self.min_size is not None:
            clauses.append(f"size >= {arg(self.min_size)}")
        if self.max_size is not None:
            clauses.append(f"size <= {arg(self.max_size)}")
        if self.since is not None:
            clauses.append(f"date >= {arg(self.since)}")
        if self.until is not None:
            clauses.append(f"date < {arg(self.until)}")
        if self.text:
            # The text is matched literally: LIKE's wildcards in it are escaped.
            pattern = "%" + re.sub(r"([\\%_])", r"\\\1", self.text) + "%"
            p = arg(pattern)
            clauses.append(f"(file_name ILIKE {p} OR caption ILIKE {p})")
        return ("WHERE " + " AND ".join(clauses)) if clauses else "", args


async def page(
    conn: asyncpg.Connection, offset: int, limit: int, media_only: bool = False,
    where: MessageFilter | None = None,
) -> tuple[list[CatalogEntry], int]:
    """One page of the catalog in message id order, and how many messages match."""
    if where is None:
        where = MessageFilter(media_only=media_only)
    elif media_only and not where.media_only:
        where = replace(where, media_only=True)
    clause, args = where.where()
    n = len(args)
    total = await conn.fetchval(f"SELECT count(*) FROM catalog {clause}", *args)
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM catalog {clause} ORDER BY message_id"
        f" LIMIT ${n + 1} OFFSET ${n + 2}",
        *args, limit, offset,
    )
    return [_entry(r) for r in rows], total
