"""Watch rules at work: each round sends again the starts a restart cut short, then
claims each enabled rule's new matching messages (`tgdl.db.rules.claim`: recorded before
they are sent, so none is started twice) and starts them as batches of at most the batch
limit, over the orchestrator's StartBatch command, carrying the rule's id."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable

import asyncpg

from tgdl.catalog import metrics
from tgdl.contracts.commands import CommandReply, RejectReason, StartBatch
from tgdl.contracts.config import chat_key
from tgdl.db import rules

log = logging.getLogger("tgdl.catalog")

# Rejections that a later try may get past; any other is final (logged, never retried).
RETRY = {RejectReason.storage_full, RejectReason.internal}

Send = Callable[[StartBatch], Awaitable[CommandReply]]


def new_batch_id() -> str:
    return f"batch_{uuid.uuid4().hex[:8]}"


def start_command(start: rules.Start) -> StartBatch:
    """The batch a rule starts: its id chosen beforehand (so sending it again is
    harmless), the rule's chat as the only one it may read."""
    return StartBatch(message_ids=start.message_ids, max_concurrent=start.rule.max_concurrent,
                      batch_id=start.batch_id, rule_id=start.rule.rule_id,
                      chats=[chat_key(start.rule.chat)], name_template=start.rule.name_template)


class RuleRunner:
    def __init__(self, pool: asyncpg.Pool, send: Send, max_files: int) -> None:
        self._pool = pool
        self._send = send
        self._max_files = max_files
        self._lock = asyncio.Lock()  # one round at a time in this process

    async def run_once(self) -> int:
        """One round over every rule; how many batches were started."""
        started = 0
        async with self._lock, self._pool.acquire() as conn:
            for start in await rules.pending(conn):
                started += await self._start(conn, start)
            for rule_id in await rules.with_news(conn):
                for start in await rules.claim(conn, rule_id, self._max_files, new_batch_id):
                    started += await self._start(conn, start)
        return started

    async def _start(self, conn: asyncpg.Connection, start: rules.Start) -> int:
        try:
            reply = await self._send(start_command(start))
        except Exception as exc:  # no orchestrator yet, NATS away: the next round retries
            metrics.START_RETRIES.inc()
            log.warning("rule %s: batch %s not started yet (%s); will retry",
                        start.rule.rule_id, start.batch_id, type(exc).__name__)
            return 0
        if reply.rejected is not None:
            if reply.rejected.reason in RETRY:
                metrics.START_RETRIES.inc()
                log.warning("rule %s: batch %s refused for now (%s); will retry",
                            start.rule.rule_id, start.batch_id, reply.rejected.detail)
                return 0
            log.error("rule %s: batch %s of %s refused: %s", start.rule.rule_id,
                      start.batch_id, start.message_ids, reply.rejected.detail)
        else:
            metrics.RULE_BATCHES.inc()
            metrics.RULE_FILES.inc(len(start.message_ids))
            log.info("rule %s started batch %s with %d file(s)", start.rule.rule_id,
                     start.batch_id, len(start.message_ids))
        await rules.accepted(conn, start.batch_id)
        return 1 if reply.rejected is None else 0
