"""A watch rule looks at each of its chat's messages once, in order, and only at those
the chat's sync has passed: a message fetched ahead of the sync (for a link) must not
let the rule step over the messages in between."""

from __future__ import annotations

import pytest

from tgdl.contracts.catalog import CatalogEntry, MediaKind
from tgdl.contracts.rules import RuleCreate
from tgdl.db import catalog, rules
from tgdl.db.connection import connect
from tgdl.db.schema import migrate_database


@pytest.fixture
async def db(servers, isolation):
    await migrate_database(servers.database_url, isolation.schema)
    conn = await connect(servers.database_url, isolation.schema)
    yield conn
    await conn.close()


def photo(message_id: int, telegram_id: int) -> CatalogEntry:
    return CatalogEntry(message_id=message_id, chat="news", telegram_message_id=telegram_id,
                        media_kind=MediaKind.photo, file_name=f"{telegram_id}.jpg", size=10)


async def synced_through(db, telegram_id: int) -> None:
    await db.execute(
        "INSERT INTO chat_sync (chat, newest_telegram_id) VALUES ('news', $1)"
        " ON CONFLICT (chat) DO UPDATE SET newest_telegram_id = $1", telegram_id)


async def test_a_message_fetched_ahead_of_the_sync_waits_and_none_is_skipped(db):
    rule = await rules.create(db, RuleCreate(chat="news"), "news", checked_through=0)
    await synced_through(db, 10)
    await catalog.upsert(db, [photo(1, 5), photo(2, 20)])  # 20: fetched for a link
    ids = iter(f"batch_{n:08x}" for n in range(100))

    async def claim() -> list[list[int]]:
        return [s.message_ids for s in await rules.claim(db, rule.rule_id, 50, ids.__next__)]

    assert await claim() == [[1]]
    assert await rules.with_news(db) == []  # nothing more the sync has passed
    # the sync reaches 15 and 20: the message in between is started too, then 20
    await catalog.upsert(db, [photo(3, 15)])
    await synced_through(db, 25)
    assert await rules.with_news(db) == [rule.rule_id]
    assert await claim() == [[3, 2]]
    assert await claim() == []


async def test_a_chat_no_sync_marks_is_looked_at_whole(db):
    # the simulated Telegram's source keeps no marks: every listed message counts
    rule = await rules.create(db, RuleCreate(chat="news"), "news", checked_through=0)
    await catalog.upsert(db, [photo(1, 5), photo(2, 20)])
    batches = await rules.claim(db, rule.rule_id, 50, lambda: "batch_00000001")
    assert [s.message_ids for s in batches] == [[1, 2]]
