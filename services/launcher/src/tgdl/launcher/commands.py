"""The one-off commands: migrate, rebuild-read-model, login, sync, seed-demo.

Each uses the servers the user named, or those of a `tgdl run` of the same data folder,
or embedded ones started for the duration of the command (see `servers.servers_for`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path

from tgdl.contracts.config import CommonSettings
from tgdl.launcher.plan import Home, settings_from
from tgdl.launcher.prepare import prepare, seed_from_simulator
from tgdl.launcher.runner import StopRequest, start_simulator
from tgdl.launcher.servers import Endpoints, servers_for
from tgdl.launcher.supervisor import Supervisor


def say(text: str) -> None:
    print(text, flush=True)


def _settings(env: Mapping[str, str], endpoints: Endpoints) -> CommonSettings:
    return settings_from(CommonSettings, env, nats_url=endpoints.nats_url,
                         database_url=endpoints.database_url)


def _session_file(env: Mapping[str, str], cwd: Path) -> Path:
    """The session `tgdl run` looks for: TGDL_SESSION_FILE, or the data folder's."""
    return Home.from_env(env, cwd).session_file(env, cwd)


async def migrate(env: Mapping[str, str], cwd: Path) -> int:
    async with servers_for(Home.from_env(env, cwd), env, say) as endpoints:
        settings = _settings(env, endpoints)
        version = await prepare(settings)
        say(f"Database schema {settings.db_schema!r} is at version {version}")
        say(f"NATS streams, consumers and buckets are ready under {settings.namespace!r}")
    return 0


async def rebuild_read_model(env: Mapping[str, str], cwd: Path) -> int:
    from tgdl.projector.projector import ProjectionLocked
    from tgdl.projector.rebuild import rebuild

    async with servers_for(Home.from_env(env, cwd), env, say) as endpoints:
        say("Rebuilding the read model from the NATS streams...")
        try:
            counts = await rebuild(_settings(env, endpoints))
        except ProjectionLocked:
            say("A projector is running and owns the read model: stop `tgdl run` (Ctrl-C) "
                "or the projector service first, then run this again. The projector "
                "continues from the rebuilt read model when it starts.")
            return 1
        for what, count in counts.items():
            say(f"  {what:<12}{count:>8}")
        say("Read model rebuilt")
    return 0


async def prune(env: Mapping[str, str], cwd: Path, days: float | None) -> int:
    from tgdl.launcher.prune import prune as prune_batches

    async with servers_for(Home.from_env(env, cwd), env, say) as endpoints:
        settings = _settings(env, endpoints)
        age = days if days is not None else settings.retention_days
        pruned = await prune_batches(settings, timedelta(days=age))
        say(f"Pruned {len(pruned)} batch(es) finished more than {age:g} day(s) ago "
            "(their files stay on disk)")
    return 0


async def seed_demo(env: Mapping[str, str], cwd: Path) -> int:
    """Fill the catalog from the simulated Telegram (TGDL_SIM_URL, or one started here)."""
    async with servers_for(Home.from_env(env, cwd), env, say) as endpoints:
        settings = _settings(env, endpoints)
        await prepare(settings)
        sim_url = env.get("TGDL_SIM_URL")
        if sim_url:
            entries = await seed_from_simulator(sim_url, settings)
        else:
            from tgdl.launcher.console import output_for

            stop = StopRequest(say)
            supervisor = Supervisor(output_for())
            try:
                sim_url = await start_simulator(supervisor, env, stop)
                entries = await seed_from_simulator(sim_url, settings) if sim_url else []
            finally:
                await supervisor.stop()
        say(f"The catalog now holds the simulated Telegram's {len(entries)} messages")
    return 0


async def login(env: Mapping[str, str], cwd: Path) -> int:
    from tgdl.telegram.client import TelegramSettings, TelegramSetupError
    from tgdl.telegram.client import login as account_login

    try:
        settings = settings_from(TelegramSettings, env, session_file=_session_file(env, cwd))
        path = await account_login(settings)
    except TelegramSetupError as exc:
        say(str(exc))
        return 1
    say(f"Logged in; the session is stored in {path}. `tgdl run` now downloads with this "
        "account; `tgdl sync <chat>` lists a chat's messages.")
    return 0


async def sync(env: Mapping[str, str], cwd: Path, chat: str, limit: int | None) -> int:
    """A running catalog service syncs the chat (it holds the account's session and
    starts what its watch rules want of the new messages); without one, this command
    syncs it through the account itself."""
    from tgdl.catalog.settings import CatalogSettings
    from tgdl.catalog.telethon_sync import SyncError, sync_chat
    from tgdl.telegram.client import (
        TelegramSettings,
        TelegramSetupError,
        api_credentials,
        read_session,
    )

    def account_of_its_own() -> None:
        """Servers started for this command have no catalog service: the account must
        be usable from here (said before any server starts)."""
        account = settings_from(TelegramSettings, env, session_file=_session_file(env, cwd))
        api_credentials(account)
        read_session(account.session_file)

    try:
        async with servers_for(Home.from_env(env, cwd), env, say,
                               alone=account_of_its_own) as endpoints:
            settings = settings_from(
                CatalogSettings, env, nats_url=endpoints.nats_url,
                database_url=endpoints.database_url, session_file=_session_file(env, cwd),
            )
            await prepare(settings)  # the catalog table exists even before a first run
            result = await _sync_by_the_service(settings, chat, limit)
            if result is None:
                result = await sync_chat(settings, chat, limit)
            say(f"Synced {chat}: {result}")
    except (TelegramSetupError, SyncError) as exc:
        say(str(exc))
        return 1
    return 0


SYNC_TIMEOUT = 3600.0  # a long history is read at Telegram's pace


async def _sync_by_the_service(settings: CommonSettings, chat: str, limit: int | None):
    """The catalog service's SyncResult; None when no catalog service is running."""
    from nats.errors import NoRespondersError

    from tgdl.bus.broker import connect as nats_connect
    from tgdl.catalog.telethon_sync import SyncError
    from tgdl.contracts.rules import CatalogReply, SyncChat, SyncResult

    nc = await nats_connect(settings.nats_url, "tgdl-sync")
    try:
        body = SyncChat(chat=chat, limit=limit).model_dump_json().encode()
        msg = await nc.request(settings.names.cmd_catalog_sync, body, timeout=SYNC_TIMEOUT)
    except NoRespondersError:
        return None
    finally:
        await nc.drain()
    reply = CatalogReply.model_validate_json(msg.data)
    if reply.rejected is not None:
        raise SyncError(reply.rejected.detail)
    assert isinstance(reply.ok, SyncResult)
    say("(synced by the running catalog service)")
    return reply.ok
