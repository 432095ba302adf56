"""What the catalog service answers when what it needs is away: PostgreSQL or Telegram
down is said as such (the gateway makes them 503s naming it), never a generic failure."""

from __future__ import annotations

import httpx
import pytest

from tgdl.catalog.app import Catalog
from tgdl.catalog.settings import CatalogSettings
from tgdl.catalog.sources import TelegramBusy
from tgdl.catalog.telethon_sync import SYNC_FLOOD_SLEEP, patient
from tgdl.contracts.rules import CatalogRejectReason, CreateRule, RuleCreate, SyncChat
from tgdl.gateway.rules import REJECTIONS
from tgdl.telegram.errors import TelegramSetupError


class DeadPool:
    async def acquire(self, **options):  # as asyncpg.Pool.acquire(timeout=...)
        raise ConnectionRefusedError("PostgreSQL is not listening")


class DeadSource:
    async def sync(self, conn, chat, limit):
        raise httpx.ConnectError("the simulated Telegram is not listening")


class OpenPool:
    async def acquire(self, **options):  # as asyncpg.Pool.acquire(timeout=...)
        return object()

    async def release(self, conn) -> None:
        pass


@pytest.mark.parametrize(("pool", "reason", "status", "error"), [
    (DeadPool(), CatalogRejectReason.database_unavailable, 503, "database_unavailable"),
    (OpenPool(), CatalogRejectReason.telegram_unavailable, 503, "telegram_unavailable"),
])
async def test_an_outage_is_answered_naming_what_is_down(pool, reason, status, error):
    catalog = Catalog(CatalogSettings.model_construct(), pool, DeadSource(), runner=None)
    reply = await catalog.answer("sync", lambda: catalog.sync(SyncChat(chat="news")))
    assert reply.ok is None and reply.rejected is not None
    assert reply.rejected.reason is reason
    assert REJECTIONS[reason][:2] == (status, error)


def test_every_rejection_has_its_http_answer():
    assert set(REJECTIONS) == set(CatalogRejectReason)


class BusySource:
    async def resolve(self, conn, chat):
        raise TelegramBusy(f"Telegram cannot answer about {chat!r} now: asked to wait 30 s")


async def test_a_rule_for_a_chat_telegram_cannot_resolve_now_is_not_an_unknown_chat():
    catalog = Catalog(CatalogSettings.model_construct(), OpenPool(), BusySource(), runner=None)
    reply = await catalog.create_rule(CreateRule(rule=RuleCreate(chat="news")))
    assert reply.rejected is not None
    assert reply.rejected.reason is CatalogRejectReason.telegram_unavailable
    assert "wait 30 s" in reply.rejected.detail
    assert REJECTIONS[reply.rejected.reason][:2] == (503, "telegram_unavailable")


def test_overlapping_syncs_leave_the_clients_flood_threshold_as_they_found_it():
    class Client:
        flood_sleep_threshold = 0  # tgdl's clients answer flood waits, never sleep them

    for first_ends_first in (True, False):
        client = Client()
        first, second = patient(client), patient(client)
        first.__enter__()
        second.__enter__()
        ending, last = (first, second) if first_ends_first else (second, first)
        ending.__exit__(None, None, None)
        assert client.flood_sleep_threshold == SYNC_FLOOD_SLEEP  # the other still runs
        last.__exit__(None, None, None)
        assert client.flood_sleep_threshold == 0


async def test_the_rules_run_in_a_round_whose_sync_could_not_reach_telegram():
    class Conn:
        async def fetch(self, *args):
            return []  # no rules' chats: the source is asked about none

    class Pool(OpenPool):
        async def acquire(self, **options):
            return Conn()

    class Revoked:
        async def refresh(self, conn, chats):
            raise TelegramSetupError("The Telegram session is not logged in: run `tgdl login`.")

    class Runner:
        rounds = 0

        async def run_once(self):
            self.rounds += 1

    runner = Runner()
    catalog = Catalog(CatalogSettings.model_construct(), Pool(), Revoked(), runner=runner)
    with pytest.raises(TelegramSetupError):  # the round still counts as failed
        await catalog.round()
    assert runner.rounds == 1  # listed messages still start, unanswered starts are resent


async def test_a_session_telegram_no_longer_accepts_is_answered_saying_what_to_do():
    class Revoked:
        async def sync(self, conn, chat, limit):
            raise TelegramSetupError("The Telegram session is not logged in: run `tgdl login`.")

    catalog = Catalog(CatalogSettings.model_construct(), OpenPool(), Revoked(), runner=None)
    reply = await catalog.answer("sync", lambda: catalog.sync(SyncChat(chat="news")))
    assert reply.rejected is not None
    assert reply.rejected.reason is CatalogRejectReason.telegram_unavailable
    assert "run `tgdl login`" in reply.rejected.detail  # not "failed to handle it"
