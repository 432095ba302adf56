"""The message catalog: looked up by the orchestrator, listed by the gateway, filled by
the simulated Telegram's seed or by `tgdl sync`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import asyncpg

from tgdl.contracts.catalog import CatalogEntry

_COLUMNS = (
    "message_id, chat, telegram_message_id, media_kind, file_name, mime_type, size, date, caption"
)


def _entry(row: asyncpg.Record) -> CatalogEntry:
    return CatalogEntry.model_validate(dict(row))


async def upsert(conn: asyncpg.Connection, entries: Iterable[CatalogEntry]) -> int:
    rows = [
        (
            e.message_id, e.chat, e.telegram_message_id,
            e.media_kind.value if e.media_kind else None,
            e.file_name, e.mime_type, e.size, e.date, e.caption,
        )
        for e in entries
    ]
    await conn.executemany(
        f"""INSERT INTO catalog ({_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)
            ON CONFLICT (message_id) DO UPDATE SET
              chat = EXCLUDED.chat, telegram_message_id = EXCLUDED.telegram_message_id,
              media_kind = EXCLUDED.media_kind, file_name = EXCLUDED.file_name,
              mime_type = EXCLUDED.mime_type, size = EXCLUDED.size, date = EXCLUDED.date,
              caption = EXCLUDED.caption, synced_at = now()""",
        rows,
    )
    return len(rows)


async def get_many(conn: asyncpg.Connection, ids: Sequence[int]) -> dict[int, CatalogEntry]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM catalog WHERE message_id = ANY($1::bigint[])", list(ids)
    )
    return {r["message_id"]: _entry(r) for r in rows}


async def page(
    conn: asyncpg.Connection, offset: int, limit: int, media_only: bool = False
) -> tuple[list[CatalogEntry], int]:
    where = "WHERE media_kind IS NOT NULL" if media_only else ""
    total = await conn.fetchval(f"SELECT count(*) FROM catalog {where}")
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM catalog {where} ORDER BY message_id LIMIT $1 OFFSET $2",
        limit, offset,
    )
    return [_entry(r) for r in rows], total
