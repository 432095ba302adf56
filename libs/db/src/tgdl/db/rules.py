"""Watch rules in PostgreSQL: written by the catalog service alone, listed by the gateway.

`claim` is how a rule never starts a message twice: in one transaction it looks at the
chat's messages the rule has not looked at yet, records each match in `rule_starts`
(primary key rule + message) with the batch id it will be started under, and moves the
rule's mark past them. The start is sent afterwards and marked `accepted` once answered;
one cut short by a crash is found by `pending` and sent again under the same batch id,
which the orchestrator answers with the batch it already started.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from tgdl.contracts.config import chat_key
from tgdl.contracts.rules import RuleCreate, WatchRule
from tgdl.db.catalog import entries_of

_RULE_COLUMNS = (
    "r.rule_id, r.chat, r.media_types, r.min_size, r.max_size, r.caption_regex,"
    " r.name_template, r.enabled, r.max_concurrent, r.created_at"
)
# How many batches and files each rule started, and its latest batch.
_WITH_COUNTS = f"""
    SELECT {_RULE_COLUMNS},
           count(DISTINCT s.batch_id) AS batches_started, count(s.message_id) AS files_started,
           (SELECT batch_id FROM rule_starts l WHERE l.rule_id = r.rule_id
             ORDER BY l.created_at DESC, l.batch_id DESC LIMIT 1) AS last_batch_id
    FROM watch_rules r LEFT JOIN rule_starts s USING (rule_id)
"""


def _rule(row: asyncpg.Record) -> WatchRule:
    return WatchRule.model_validate(dict(row))


def new_rule_id() -> str:
    return f"rule_{uuid.uuid4().hex[:8]}"


async def create(conn: asyncpg.Connection, rule: RuleCreate, chat: str,
                 checked_through: int) -> WatchRule:
    """Store a rule for `chat` (as the catalog names it) that looks only at messages
    newer than `checked_through`."""
    rule_id = new_rule_id()
    await conn.execute(
        """INSERT INTO watch_rules (rule_id, chat, media_types, min_size, max_size,
               caption_regex, name_template, enabled, max_concurrent, checked_through)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)""",
        rule_id, chat, [k.value for k in rule.media_types], rule.min_size, rule.max_size,
        rule.caption_regex, rule.name_template, rule.enabled, rule.max_concurrent,
        checked_through)
    found = await get(conn, rule_id)
    assert found is not None
    return found


async def get(conn: asyncpg.Connection, rule_id: str) -> WatchRule | None:
    row = await conn.fetchrow(f"{_WITH_COUNTS} WHERE r.rule_id = $1 GROUP BY r.rule_id",
                              rule_id)
    return _rule(row) if row else None


async def listed(conn: asyncpg.Connection,
                 chats: frozenset[str] | None = None) -> list[WatchRule]:
    """Every rule, oldest first; `chats` (chat_key()s): only rules of those chats."""
    rows = await conn.fetch(f"{_WITH_COUNTS} GROUP BY r.rule_id ORDER BY r.created_at, r.rule_id")
    rules = [_rule(r) for r in rows]
    return rules if chats is None else [r for r in rules if chat_key(r.chat) in chats]


async def set_enabled(conn: asyncpg.Connection, rule_id: str, enabled: bool) -> WatchRule | None:
    await conn.execute("UPDATE watch_rules SET enabled = $2 WHERE rule_id = $1", rule_id, enabled)
    return await get(conn, rule_id)


async def delete(conn: asyncpg.Connection, rule_id: str) -> WatchRule | None:
    async with conn.transaction():
        rule = await get(conn, rule_id)
        if rule is not None:
            await conn.execute("DELETE FROM watch_rules WHERE rule_id = $1", rule_id)
    return rule


async def watched_chats(conn: asyncpg.Connection) -> list[str]:
    """The chats an enabled rule watches."""
    rows = await conn.fetch("SELECT DISTINCT chat FROM watch_rules WHERE enabled ORDER BY chat")
    return [r["chat"] for r in rows]


# A message a rule may look at: one its chat's sync has passed. A message stored ahead
# of the sync (fetched for a link) waits until the sync reaches it, or the rule, which
# looks at each message once, in order, would step over those in between.
SYNCED = ("{id} <= COALESCE((SELECT s.newest_telegram_id FROM chat_sync s"
          " WHERE s.chat = {chat}), {id})")


async def with_news(conn: asyncpg.Connection) -> list[str]:
    """The enabled rules whose chat has messages they have not looked at yet (one cheap
    question per round, however many rules there are)."""
    rows = await conn.fetch(
        "SELECT rule_id FROM watch_rules r WHERE enabled AND EXISTS (SELECT 1 FROM catalog c"
        " WHERE c.chat = r.chat AND c.telegram_message_id > r.checked_through"
        f" AND {SYNCED.format(chat='r.chat', id='c.telegram_message_id')})"
        " ORDER BY created_at, rule_id")
    return [r["rule_id"] for r in rows]


@dataclass(frozen=True)
class Start:
    """A batch a rule starts (or started before a restart cut its answer short)."""

    rule: WatchRule
    batch_id: str
    message_ids: list[int]


async def claim(conn: asyncpg.Connection, rule_id: str, max_files: int,
                new_batch_id: Callable[[], str]) -> list[Start]:
    """The starts of the rule's chat's messages it has not looked at yet (none when it is
    paused), at most `max_files` per batch, recorded before they are sent."""
    async with conn.transaction():
        # one claimer per rule at a time, whichever catalog replica
        row = await conn.fetchrow(
            "SELECT chat, checked_through, enabled FROM watch_rules WHERE rule_id = $1"
            " FOR UPDATE", rule_id)
        if row is None or not row["enabled"]:
            return []
        candidates = await entries_of(
            conn, "chat = $1 AND telegram_message_id > $2 AND "
            + SYNCED.format(chat="$1", id="telegram_message_id")
            + " ORDER BY telegram_message_id", row["chat"], row["checked_through"])
        if not candidates:
            return []
        rule = await get(conn, rule_id)
        assert rule is not None
        matching = [e.message_id for e in candidates if rule.matches(e)]
        starts = [Start(rule, new_batch_id(), matching[i:i + max_files])
                  for i in range(0, len(matching), max_files)]
        await conn.executemany(
            "INSERT INTO rule_starts (rule_id, message_id, batch_id) VALUES ($1, $2, $3)"
            " ON CONFLICT DO NOTHING",
            [(rule_id, m, s.batch_id) for s in starts for m in s.message_ids])
        await conn.execute(
            "UPDATE watch_rules SET checked_through = $2 WHERE rule_id = $1",
            rule_id, max(e.telegram_message_id for e in candidates))
    return starts


async def pending(conn: asyncpg.Connection) -> list[Start]:
    """Starts recorded but never answered (the service stopped in between)."""
    rows = await conn.fetch(
        "SELECT rule_id, batch_id, array_agg(message_id ORDER BY message_id) AS ids"
        " FROM rule_starts WHERE NOT accepted GROUP BY rule_id, batch_id"
        " ORDER BY min(created_at), batch_id")
    starts = []
    for r in rows:
        rule = await get(conn, r["rule_id"])
        if rule is not None:
            starts.append(Start(rule, r["batch_id"], list(r["ids"])))
    return starts


async def accepted(conn: asyncpg.Connection, batch_id: str) -> None:
    await conn.execute("UPDATE rule_starts SET accepted = true WHERE batch_id = $1", batch_id)

