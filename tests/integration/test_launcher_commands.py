"""The one-off `tgdl` commands against the session's real servers, and how commands share
a data folder with a running `tgdl run`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path

import pytest
from nats.errors import NoRespondersError
from sim_helpers import running_sim
from waiting import until

from tgdl.catalog.app import serve as serve_catalog
from tgdl.catalog.settings import CatalogSettings
from tgdl.contracts.subjects import Names
from tgdl.db.connection import connect
from tgdl.launcher import commands
from tgdl.launcher.plan import Home
from tgdl.launcher.prepare import prepare
from tgdl.launcher.servers import HomeBusy, HomeLock, servers_for


def _env(servers, isolation, home: Path) -> dict[str, str]:
    return {**isolation.env(servers), "TGDL_HOME": str(home)}


async def test_migrate_creates_the_schema_and_the_streams(servers, isolation, nc, tmp_path):
    env = _env(servers, isolation, tmp_path / "home")

    assert await commands.migrate(env, tmp_path) == 0

    conn = await connect(servers.database_url, isolation.schema)
    try:
        assert await conn.fetchval("SELECT count(*) FROM catalog") == 0
    finally:
        await conn.close()
    names = Names(isolation.namespace)
    js = nc.jetstream()
    for stream in (names.events_stream, names.jobs_stream, names.outcomes_stream,
                   names.progress_stream):
        assert (await js.stream_info(stream)).config.name == stream
    assert not (tmp_path / "home").exists()  # given servers: the data folder is not needed


async def test_seed_demo_fills_the_catalog_from_a_simulator_it_starts(
    servers, isolation, tmp_path
):
    env = {**os.environ, **_env(servers, isolation, tmp_path / "home"), "TGDL_SIM_COUNT": "30"}
    env.pop("TGDL_SIM_URL", None)

    assert await commands.seed_demo(env, tmp_path) == 0

    conn = await connect(servers.database_url, isolation.schema)
    try:
        # the 30 messages, then the forwards of some of their files (TGDL_SIM_FORWARDS)
        assert await conn.fetchval("SELECT count(*) FROM catalog") == 30 + 8
        forwards = await conn.fetch(
            "SELECT message_id, location->>'id' AS file FROM catalog WHERE message_id > 30")
        assert all(int(r["file"]) <= 30 for r in forwards)
    finally:
        await conn.close()


async def test_commands_join_the_servers_of_a_running_tgdl_run(tmp_path):
    home = Home(tmp_path / "home")
    running = HomeLock(home.lock)
    assert running.try_acquire()  # as `tgdl run` holds it
    home.instance.write_text(json.dumps(
        {"nats_url": "nats://127.0.0.1:1", "database_url": "postgresql:///run", "pid": 1}))
    said: list[str] = []
    try:
        async with servers_for(home, {}, said.append) as endpoints:
            assert (endpoints.nats_url, endpoints.database_url) == (
                "nats://127.0.0.1:1", "postgresql:///run")
        assert not list(home.root.glob("nats")), "no second nats-server on the same data"
        assert "Using the servers of the `tgdl run`" in said[0]

        with pytest.raises(HomeBusy, match="another tgdl process"):
            async with servers_for(home, {}, said.append, owner=True):
                pass  # a second `tgdl run` on the same folder is refused
    finally:
        running.release()


async def test_the_data_folder_is_free_again_after_a_command(tmp_path):
    lock = HomeLock(tmp_path / "run.lock")
    assert lock.try_acquire()
    assert not HomeLock(tmp_path / "run.lock").try_acquire()
    lock.release()
    again = HomeLock(tmp_path / "run.lock")
    assert again.try_acquire()
    again.release()


async def test_sync_asks_a_running_catalog_service_which_syncs_the_chat(
        servers, isolation, nc, tmp_path, capsys):
    env = _env(servers, isolation, tmp_path / "home")
    async with running_sim() as sim_url:
        settings = CatalogSettings(
            nats_url=servers.nats_url, database_url=servers.database_url,
            namespace=isolation.namespace, db_schema=isolation.schema, sim_url=sim_url)
        await prepare(settings)
        stop = asyncio.Event()
        service = asyncio.create_task(serve_catalog(settings, stop))
        try:
            async def answering():
                with contextlib.suppress(NoRespondersError, TimeoutError):
                    return (await nc.request(settings.names.cmd_catalog_sync,
                                             b'{"chat": "sim_demo"}', timeout=5)).data
            await until(answering, 20, what="catalog service answering")
            capsys.readouterr()
            assert await commands.sync(env, tmp_path, "@SIM_demo", None) == 0
            said = capsys.readouterr().out
            assert "(synced by the running catalog service)" in said
            assert "added to the catalog as 'sim_demo'" in said
            assert await commands.sync(env, tmp_path, "no_such_chat", None) == 1
            assert "no chat 'no_such_chat'" in capsys.readouterr().out
        finally:
            stop.set()
            await service


async def test_sync_with_no_service_to_ask_and_no_account_says_so_before_starting_servers(
        tmp_path, capsys):
    """Servers started for the command would have no catalog service: without the
    account's credentials nothing could sync, so nothing is started."""
    home = tmp_path / "home"
    env = {"TGDL_HOME": str(home), "TGDL_SESSION_FILE": str(tmp_path / "none.session")}

    assert await commands.sync(env, tmp_path, "@chan", None) == 1

    said = capsys.readouterr().out
    assert "Telegram API credentials are missing: set TGDL_API_ID and TGDL_API_HASH" in said
    assert "Started" not in said
    assert not (home / "nats").exists() and not (home / "pg").exists()

    env |= {"TGDL_API_ID": "12345", "TGDL_API_HASH": "0123abcd"}  # not logged in yet
    assert await commands.sync(env, tmp_path, "@chan", None) == 1
    said = capsys.readouterr().out
    assert "No Telegram session at" in said and "run `tgdl login` first" in said
    assert not (home / "nats").exists()
