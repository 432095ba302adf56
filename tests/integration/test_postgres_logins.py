"""The embedded PostgreSQL's logins, on real clusters of its own: the services log in with a
password as a role that owns their database and tables and is no superuser; nobody gets in
without the password (the superuser neither); and a data folder of an older tgdl, where
the services ran as the trusted superuser, is upgraded in place with its data."""

from __future__ import annotations

import json
import os
import stat
import warnings
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from tgdl.db.connection import connect
from tgdl.db.schema import LATEST_VERSION, migrate_database, verify_schema
from tgdl.launcher import commands
from tgdl.launcher.embedded import (
    PG_DATABASE,
    PG_HBA,
    PG_LOGINS,
    PG_ROLE,
    PG_SUPERUSER,
    login_url,
    start_postgres,
)
from tgdl.launcher.plan import Home

OWNERS_SQL = """
SELECT (SELECT rolname FROM pg_roles r JOIN pg_database d ON d.datdba = r.oid
        WHERE d.datname = current_database()) AS database,
       (SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = $1) AS schema,
       (SELECT array_agg(DISTINCT tableowner) FROM pg_tables WHERE schemaname = $1) AS tables
"""


async def owners(conn: asyncpg.Connection, schema: str) -> tuple[str, str, list[str]]:
    row = await conn.fetchrow(OWNERS_SQL, schema)
    return row["database"], row["schema"], row["tables"]


async def assert_the_role_owns(url: str, schema: str) -> None:
    conn = await connect(url, schema)
    try:
        me = await conn.fetchrow(
            "SELECT current_user AS name, rolsuper, rolcreaterole, rolcreatedb"
            " FROM pg_roles WHERE rolname = current_user")
        assert tuple(me.values()) == (PG_ROLE, False, False, False)
        assert await owners(conn, schema) == (PG_ROLE, PG_ROLE, [PG_ROLE])
    finally:
        await conn.close()


async def refused(url: str) -> bool:
    try:
        conn = await asyncpg.connect(url)
    except asyncpg.InvalidPasswordError:
        return True
    await conn.close()
    return False


async def test_services_log_in_as_a_role_that_owns_their_tables_and_is_no_superuser(
        tmp_path: Path):
    pg = start_postgres(tmp_path / "pg")
    try:
        assert urlsplit(pg.url).username == PG_ROLE and urlsplit(pg.url).password
        assert await migrate_database(pg.url, "tgdl") == LATEST_VERSION
        await assert_the_role_owns(pg.url, "tgdl")
        logins = tmp_path / "pg" / PG_LOGINS
        assert stat.S_IMODE(logins.stat().st_mode) == 0o600
        assert logins.stat().st_uid == os.geteuid()
        # a second start (as after a restart) keeps the logins and the data
        again = start_postgres(tmp_path / "pg")
        try:
            assert again.url == pg.url
            assert await verify_schema(again.url, "tgdl") == LATEST_VERSION
        finally:
            again.stop()
    finally:
        pg.stop()


async def test_no_login_gets_in_without_its_password(tmp_path: Path):
    pg = start_postgres(tmp_path / "pg")
    try:
        passwords = json.loads((tmp_path / "pg" / PG_LOGINS).read_text())
        for user, database in ((PG_ROLE, PG_DATABASE), (PG_SUPERUSER, "postgres"),
                               (PG_SUPERUSER, PG_DATABASE)):
            assert await refused(login_url(pg.url, user, "", database)), user
            assert await refused(login_url(pg.url, user, "wrong", database)), user
        conn = await asyncpg.connect(login_url(pg.url, PG_SUPERUSER,
                                               passwords[PG_SUPERUSER], "postgres"))
        try:  # the superuser is still there, for tgdl's own setup only
            assert await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = $1",
                                       PG_SUPERUSER)
            rules = await conn.fetch("SELECT auth_method, error FROM pg_hba_file_rules")
        finally:
            await conn.close()
        assert {(r["auth_method"], r["error"]) for r in rules} == {("scram-sha-256", None)}
        with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError,
                           match=r"no pg_hba\.conf entry"):  # the role has one database
            await asyncpg.connect(login_url(pg.url, PG_ROLE, passwords[PG_ROLE], "postgres"))
    finally:
        pg.stop()


def test_lost_passwords_are_a_clear_error_not_a_new_trusting_server(tmp_path: Path):
    start_postgres(tmp_path / "pg").stop()
    (tmp_path / "pg" / PG_LOGINS).unlink()
    with pytest.raises(RuntimeError, match="restore the file from a backup"):
        start_postgres(tmp_path / "pg")
    assert (tmp_path / "pg" / "pg_hba.conf").read_text() == PG_HBA  # still no trust


async def test_an_older_trusting_data_folder_is_upgraded_with_its_data(
        servers, isolation, tmp_path: Path):
    home = Home(tmp_path / "home")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
        import pgserver

    # As an older tgdl left it: its services migrated and wrote as the trusted superuser,
    # in the database `postgres`.
    home.root.mkdir()
    old = pgserver.get_server(home.postgres, cleanup_mode="stop")
    old_url = old.get_uri()
    try:
        await migrate_database(old_url, "tgdl")
        conn = await connect(old_url, "tgdl")
        try:
            await conn.execute("INSERT INTO catalog (message_id, chat, telegram_message_id)"
                               " VALUES (7, 'chan', 907)")
        finally:
            await conn.close()
    finally:
        old.cleanup()

    env = {"TGDL_HOME": str(home.root), "TGDL_NATS_URL": servers.nats_url,
           "TGDL_NAMESPACE": isolation.namespace}
    assert await commands.migrate(env, tmp_path) == 0  # starts, upgrades, migrates, stops
    pg = start_postgres(home.postgres)
    try:
        await assert_the_role_owns(pg.url, "tgdl")
        conn = await connect(pg.url, "tgdl")
        try:  # the data is there, and the role may write it
            assert await conn.fetchval("SELECT chat FROM catalog WHERE message_id = 7") == "chan"
            await conn.execute("INSERT INTO catalog (message_id, chat, telegram_message_id)"
                               " VALUES (8, 'chan', 908)")
            await conn.execute("TRUNCATE catalog")
        finally:
            await conn.close()
        assert await refused(old_url)  # the old trusted login is gone
    finally:
        pg.stop()
