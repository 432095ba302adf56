"""Catalog service wiring on FastStream: chat sync on request (`tgdl sync`), watch rules
(created, paused, resumed and deleted by the gateway's commands), and the loop that keeps
the watched chats in sync and lets the rules start batches.

Commands are request/reply on core NATS (queue group "catalog"), answered with a
CatalogReply. The loop runs every TGDL_SYNC_INTERVAL seconds, and at once when a rule is
created or resumed or Telegram reports a new message (with a real account).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated

import asyncpg
import httpx
from faststream.middlewares import ExceptionMiddleware
from faststream.nats import NatsBroker, NatsRouter
from pydantic import ValidationError

from tgdl.bus.broker import LoopContext, nats_broker
from tgdl.bus.topology import verify_topology
from tgdl.catalog import metrics
from tgdl.catalog.settings import CatalogSettings
from tgdl.catalog.sources import Source, SyncError, TelegramBusy, UnknownChat, source_for
from tgdl.catalog.watcher import RuleRunner
from tgdl.contracts.commands import CommandReply, StartBatch
from tgdl.contracts.rules import (
    CatalogRejection,
    CatalogRejectReason,
    CatalogReply,
    CreateRule,
    DeleteRule,
    FetchMessages,
    RuleResult,
    SyncChat,
    UpdateRule,
    WatchRule,
)
from tgdl.db import rules
from tgdl.db.connection import create_pool
from tgdl.db.schema import verify_schema
from tgdl.runtime import load_settings, run_service, until_reachable
from tgdl.telegram.errors import TelegramSetupError

log = logging.getLogger("tgdl.catalog")

CATALOG = "catalog"  # the broker context key of the running `Catalog`
Cat = Annotated["Catalog", LoopContext(CATALOG)]  # resolved on the loop, not a thread
START_TIMEOUT = 10.0  # seconds an orchestrator has to answer a rule's start
# What a source that cannot be reached raises (the simulated Telegram's HTTP, Telethon's
# connection): the caller is told Telegram is away, not that the catalog failed.
SOURCE_OUTAGES: tuple[type[Exception], ...] = (httpx.HTTPError, ConnectionError, OSError)
# What a lost PostgreSQL raises (a refused socket is an OSError too: asked first).
DB_OUTAGES: tuple[type[Exception], ...] = (
    asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError, asyncpg.TooManyConnectionsError)


class _DatabaseDown(Exception):
    """PostgreSQL did not give a connection."""


@contextlib.asynccontextmanager
async def _connection(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    try:
        conn = await pool.acquire(timeout=5)
    except (*DB_OUTAGES, OSError, TimeoutError) as exc:
        raise _DatabaseDown(type(exc).__name__) from exc
    try:
        yield conn
    finally:
        await pool.release(conn)


def _rejected(reason: CatalogRejectReason, detail: str) -> CatalogReply:
    return CatalogReply(rejected=CatalogRejection(reason=reason, detail=detail))


def _invalid_command(exc: ValidationError) -> CatalogReply:
    problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
                         for e in exc.errors())
    return _rejected(CatalogRejectReason.invalid_command, problems or "not a valid command")


def _rule_not_found(rule_id: str) -> CatalogReply:
    return _rejected(CatalogRejectReason.rule_not_found, f"no watch rule {rule_id!r}")


def _found(rule: WatchRule | None, rule_id: str) -> CatalogReply:
    return CatalogReply(ok=RuleResult(rule=rule)) if rule else _rule_not_found(rule_id)


class Catalog:
    """What the commands and the loop share: the database, the source, the rules."""

    def __init__(self, settings: CatalogSettings, pool: asyncpg.Pool, source: Source,
                 runner: RuleRunner) -> None:
        self.settings = settings
        self.pool = pool
        self.source = source
        self.runner = runner
        self.wake = asyncio.Event()

    async def answer(self, subject: str, handle: Callable[[], Awaitable[CatalogReply]]
                     ) -> CatalogReply:
        try:
            return await handle()
        except (_DatabaseDown, *DB_OUTAGES) as exc:
            log.warning("command on %s: PostgreSQL unreachable (%s)", subject, exc)
            return _rejected(CatalogRejectReason.database_unavailable,
                             "PostgreSQL could not be reached")
        except TelegramSetupError as exc:  # e.g. a session revoked: the detail says what to do
            log.warning("command on %s: %s", subject, exc)
            return _rejected(CatalogRejectReason.telegram_unavailable, str(exc))
        except SOURCE_OUTAGES as exc:
            log.warning("command on %s: Telegram unreachable (%s)", subject,
                        type(exc).__name__)
            return _rejected(CatalogRejectReason.telegram_unavailable,
                             f"Telegram could not be reached ({type(exc).__name__})")
        except Exception:
            log.exception("command on %s failed", subject)
            return _rejected(CatalogRejectReason.internal,
                             "the catalog service failed to handle it")

    async def sync(self, cmd: SyncChat) -> CatalogReply:
        try:
            async with _connection(self.pool) as conn:
                result = await self.source.sync(conn, cmd.chat, cmd.limit)
        except SyncError as exc:
            return _rejected(CatalogRejectReason.sync_failed, str(exc))
        self.wake.set()  # the rules of that chat may have something new
        return CatalogReply(ok=result)

    async def fetch(self, cmd: FetchMessages) -> CatalogReply:
        try:
            async with _connection(self.pool) as conn:
                result = await self.source.fetch(conn, cmd.chat, cmd.telegram_message_ids)
        except SyncError as exc:
            return _rejected(CatalogRejectReason.sync_failed, str(exc))
        except TelegramBusy as exc:
            return _rejected(CatalogRejectReason.telegram_unavailable, str(exc))
        log.info("fetched %d of %d messages of %s into the catalog", len(result.stored),
                 len(cmd.telegram_message_ids), result.chat)
        return CatalogReply(ok=result)

    async def create_rule(self, cmd: CreateRule) -> CatalogReply:
        try:
            async with _connection(self.pool) as conn:
                chat, newest = await self.source.resolve(conn, cmd.rule.chat)
                # from the chat's first message in the catalog, or after its newest
                rule = await rules.create(conn, cmd.rule, chat,
                                          0 if cmd.rule.include_existing else newest)
        except (UnknownChat, SyncError) as exc:
            return _rejected(CatalogRejectReason.unknown_chat, str(exc))
        except TelegramBusy as exc:  # not "no such chat": it may answer in a moment
            return _rejected(CatalogRejectReason.telegram_unavailable, str(exc))
        log.info("watch rule %s created for %s%s", rule.rule_id, rule.chat,
                 ", its messages already listed included" if cmd.rule.include_existing else "")
        self.wake.set()
        return CatalogReply(ok=RuleResult(rule=rule))

    async def update_rule(self, cmd: UpdateRule) -> CatalogReply:
        async with _connection(self.pool) as conn:
            rule = await rules.set_enabled(conn, cmd.rule_id, cmd.enabled)
        if rule is not None:
            log.info("watch rule %s %s", rule.rule_id, "resumed" if rule.enabled else "paused")
            self.wake.set()
        return _found(rule, cmd.rule_id)

    async def delete_rule(self, cmd: DeleteRule) -> CatalogReply:
        async with _connection(self.pool) as conn:
            rule = await rules.delete(conn, cmd.rule_id)
        if rule is not None:
            log.info("watch rule %s deleted", rule.rule_id)
        return _found(rule, cmd.rule_id)

    async def round(self) -> None:
        """The watched chats' new messages into the catalog, then the rules' starts. The
        rules run even when Telegram could not be read (a revoked session, no network):
        what is listed already still starts, and starts left unanswered are sent again;
        the round still counts as failed."""
        try:
            async with _connection(self.pool) as conn:
                await self.source.refresh(conn, await rules.watched_chats(conn))
        except Exception as exc:
            await self.runner.run_once()
            raise exc from None
        await self.runner.run_once()

    async def serve(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.wake.clear()
            try:
                await self.round()
                metrics.ROUNDS.labels("ok").inc()
                metrics.LAST_ROUND.set_to_current_time()
            except Exception as exc:  # an outage of the source or PostgreSQL: next round
                metrics.ROUNDS.labels("failed").inc()
                log.warning("sync round failed (%s: %s); will try again",
                            type(exc).__name__, exc)
            waiting = [asyncio.create_task(stop.wait()), asyncio.create_task(self.wake.wait())]
            await asyncio.wait(waiting, timeout=self.settings.interval,
                               return_when=asyncio.FIRST_COMPLETED)
            for task in waiting:
                task.cancel()


def create_broker(settings: CatalogSettings) -> NatsBroker:
    """Every subscriber and publisher of the catalog service; connects only when started
    (so the AsyncAPI document can be generated from it without NATS)."""
    names = settings.names
    broker = nats_broker(settings.nats_url, settings.replica, log_level=logging.DEBUG,
                         description="tgdl catalog: chat sync, watch rules, new messages")
    commands = NatsRouter(middlewares=[ExceptionMiddleware(publish_handlers={
        ValidationError: _invalid_command})])

    def command(subject: str, title: str, description: str):
        return commands.subscriber(subject, queue="catalog", title=title,
                                   description=f"{description}; replies a CatalogReply "
                                   "(the result or a CatalogRejection).")

    @command(names.cmd_catalog_sync, "SyncChat",
             "List a chat's new messages into the catalog (`tgdl sync`)")
    async def sync_chat(cmd: SyncChat, cat: Cat) -> CatalogReply:
        return await cat.answer(names.cmd_catalog_sync, lambda: cat.sync(cmd))

    @command(names.cmd_catalog_fetch, "FetchMessages",
             "Add messages to the catalog by their chat and ids (message links)")
    async def fetch_messages(cmd: FetchMessages, cat: Cat) -> CatalogReply:
        return await cat.answer(names.cmd_catalog_fetch, lambda: cat.fetch(cmd))

    @command(names.cmd_rule_create, "CreateRule",
             "Create a watch rule: new matching media of the chat start batches")
    async def create_rule(cmd: CreateRule, cat: Cat) -> CatalogReply:
        return await cat.answer(names.cmd_rule_create, lambda: cat.create_rule(cmd))

    @command(names.cmd_rule_update, "UpdateRule", "Pause or resume a watch rule")
    async def update_rule(cmd: UpdateRule, cat: Cat) -> CatalogReply:
        return await cat.answer(names.cmd_rule_update, lambda: cat.update_rule(cmd))

    @command(names.cmd_rule_delete, "DeleteRule", "Delete a watch rule")
    async def delete_rule(cmd: DeleteRule, cat: Cat) -> CatalogReply:
        return await cat.answer(names.cmd_rule_delete, lambda: cat.delete_rule(cmd))

    broker.include_router(commands)
    broker.publisher(names.cmd_batch_start, schema=StartBatch, title="startBatch",
                     description="A watch rule's batch of new matching media: request/reply, "
                                 "answered by an orchestrator with a CommandReply; its "
                                 "batch_id is chosen first, so sending it again is harmless.")
    return broker


async def serve(settings: CatalogSettings, stop: asyncio.Event) -> None:
    names = settings.names
    await until_reachable("PostgreSQL",
                          lambda: verify_schema(settings.database_url, settings.db_schema),
                          log, stop)
    broker = create_broker(settings)
    pool = None
    source = source_for(settings)
    try:
        js = (await until_reachable("NATS", broker.connect, log, stop)).jetstream()
        await verify_topology(js, names)
        pool = await create_pool(settings.database_url, settings.db_schema)
        starts = broker.publisher(names.cmd_batch_start)

        async def send(cmd: StartBatch) -> CommandReply:
            msg = await starts.request(cmd, timeout=START_TIMEOUT)
            return CommandReply.model_validate_json(msg.body)

        catalog = Catalog(settings, pool, source,
                          RuleRunner(pool, send, settings.max_batch_ids))
        await source.start(catalog.wake.set)
        broker.context.set_global(CATALOG, catalog)
        await broker.start()
        log.info("catalog service ready (%s, sync every %g s)", settings.telegram,
                 settings.interval)
        await catalog.serve(stop)
    finally:
        await broker.stop()
        with contextlib.suppress(Exception):
            await source.close()
        if pool is not None:
            await pool.close()


def main() -> None:
    settings = load_settings(CatalogSettings, "catalog")
    run_service("catalog", lambda stop: serve(settings, stop))
