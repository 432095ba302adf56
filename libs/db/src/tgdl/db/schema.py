"""Versioned migrations. Append new versions; never edit an applied one.

Tables:
- ``catalog``: the messages the service knows (reference data, written by sync/seed).
- ``batches``, ``batch_files``, ``jobs``: the read model, written only by the projector.
- ``projection_state``: one row, the last sequence the projector applied of each stream
  (`tgdl.db.positions`), updated in the same transaction as the read model.
- ``watch_rules``, ``rule_starts``: watch rules and the messages each one started (in
  which batch), written only by the catalog service.
"""

from __future__ import annotations

import asyncpg

from tgdl.db.connection import connect

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE catalog (
            message_id          BIGINT PRIMARY KEY,
            chat                TEXT NOT NULL,
            telegram_message_id BIGINT NOT NULL,
            media_kind          TEXT,
            file_name           TEXT,
            mime_type           TEXT,
            size                BIGINT,
            date                TIMESTAMPTZ,
            caption             TEXT,
            synced_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
            UNIQUE (chat, telegram_message_id)
        );
        CREATE TABLE chat_sync (
            chat                TEXT PRIMARY KEY,
            newest_telegram_id  BIGINT NOT NULL,
            synced_at           TIMESTAMPTZ NOT NULL DEFAULT now()
        );
        CREATE TABLE batches (
            batch_id        TEXT PRIMARY KEY,
            kind            TEXT NOT NULL,
            max_concurrent  INT NOT NULL,
            force           BOOLEAN NOT NULL,
            total_files     INT NOT NULL,
            status          TEXT NOT NULL,
            created_at      TIMESTAMPTZ NOT NULL,
            updated_at      TIMESTAMPTZ NOT NULL,
            finished_at     TIMESTAMPTZ
        );
        CREATE TABLE batch_files (
            batch_id            TEXT NOT NULL REFERENCES batches ON DELETE CASCADE,
            message_id          BIGINT NOT NULL,
            position            INT NOT NULL,
            status              TEXT NOT NULL,
            job_id              TEXT,
            total_size          BIGINT,
            file_path           TEXT,
            relative_path       TEXT,
            already_downloaded  BOOLEAN NOT NULL DEFAULT false,
            error               TEXT,
            detail              TEXT,
            suggestion          TEXT,
            PRIMARY KEY (batch_id, message_id)
        );
        CREATE INDEX batch_files_job ON batch_files (job_id);
        CREATE TABLE jobs (
            job_id          TEXT PRIMARY KEY,
            message_id      BIGINT NOT NULL,
            state           TEXT NOT NULL,
            downloaded_size BIGINT NOT NULL DEFAULT 0,
            total_size      BIGINT,
            download_speed  BIGINT,
            eta_seconds     INT,
            wait_seconds    INT,
            attempt         INT NOT NULL DEFAULT 1,
            file_path       TEXT,
            relative_path   TEXT,
            error           TEXT,
            detail          TEXT,
            suggestion      TEXT,
            updated_at      TIMESTAMPTZ NOT NULL
        );
        CREATE INDEX jobs_by_message ON jobs (message_id, updated_at DESC);
        CREATE TABLE projection_positions (
            stream   TEXT PRIMARY KEY,
            last_seq BIGINT NOT NULL
        );
        """,
    ),
    (
        2,
        # A message's latest state (single-file status, the message list) is looked up
        # by message id across every batch that asked for it.
        "CREATE INDEX batch_files_by_message ON batch_files (message_id);",
    ),
    (
        3,
        # The batch list (newest first) and the message list's filters by chat and date.
        """
        CREATE INDEX batches_newest ON batches (created_at DESC, batch_id DESC);
        CREATE INDEX catalog_by_chat_date ON catalog (chat, date);
        CREATE INDEX catalog_by_date ON catalog (date);
        """,
    ),
    (
        4,
        # Where to fetch each file (FileLocation as JSON), so the downloader does not ask
        # Telegram for the message before every file.
        "ALTER TABLE catalog ADD COLUMN location JSONB;",
    ),
    (
        5,
        # Whether a finished download matched Telegram's own hashes of the file.
        "ALTER TABLE jobs ADD COLUMN hash_verified BOOLEAN;",
    ),
    (
        6,
        # A file not downloaded but linked to another message's copy of the same
        # Telegram file (a forward): which message that was.
        """
        ALTER TABLE batch_files ADD COLUMN same_file_as BIGINT;
        ALTER TABLE jobs ADD COLUMN same_file_as BIGINT;
        """,
    ),
    (
        7,
        # Watch rules (the catalog service's): `checked_through` is the newest Telegram
        # message of the chat a rule has looked at; a message it starts is in
        # `rule_starts` once (the primary key), with the batch id chosen before the
        # start was sent, so a start cut short by a restart is sent again with the same
        # id (`accepted` once the orchestrator answered). The read model shows which
        # rule started a batch.
        """
        CREATE TABLE watch_rules (
            rule_id         TEXT PRIMARY KEY,
            chat            TEXT NOT NULL,
            media_types     TEXT[] NOT NULL DEFAULT '{}',
            min_size        BIGINT,
            max_size        BIGINT,
            caption_regex   TEXT,
            name_template   TEXT,
            enabled         BOOLEAN NOT NULL,
            max_concurrent  INT NOT NULL,
            checked_through BIGINT NOT NULL,
            created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
        );
        CREATE TABLE rule_starts (
            rule_id     TEXT NOT NULL REFERENCES watch_rules ON DELETE CASCADE,
            message_id  BIGINT NOT NULL,
            batch_id    TEXT NOT NULL,
            accepted    BOOLEAN NOT NULL DEFAULT false,
            created_at  TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),  -- in claim order
            PRIMARY KEY (rule_id, message_id)
        );
        CREATE INDEX rule_starts_pending ON rule_starts (batch_id) WHERE NOT accepted;
        ALTER TABLE batches ADD COLUMN rule_id TEXT;
        """,
    ),
    (
        8,
        # Which line a batch's jobs wait in under the global cap (high, normal, low).
        "ALTER TABLE batches ADD COLUMN priority TEXT NOT NULL DEFAULT 'normal';",
    ),
    (
        9,
        # Every stream's position in one row: a transaction stores its positions with one
        # row write, not one per stream it advanced.
        """
        CREATE TABLE projection_state (
            only_row  BOOLEAN PRIMARY KEY DEFAULT true CHECK (only_row),
            positions JSONB NOT NULL
        );
        INSERT INTO projection_state (positions)
        SELECT jsonb_object_agg(stream, last_seq) FROM projection_positions
        HAVING count(*) > 0;
        DROP TABLE projection_positions;
        """,
    ),
    (
        10,
        # A message link names a chat and the message's id in it (`GET
        # /api/messages/resolve`); chats are compared as chat_key() does, so the id leads.
        "CREATE INDEX catalog_by_telegram_id ON catalog (telegram_message_id);",
    ),
    (
        11,
        # An album's messages share Telegram's grouped_id: a link to one of them names
        # the whole album (as Telegram shows it), unless it says ?single.
        """
        ALTER TABLE catalog ADD COLUMN grouped_id BIGINT;
        CREATE INDEX catalog_by_album ON catalog (chat, grouped_id)
            WHERE grouped_id IS NOT NULL;
        """,
    ),
    (
        12,
        # The naming template a batch started with, so a retry of its failed files puts
        # them (and resumes their .part files) where the batch would have. Rows of
        # batches started before have none until `tgdl rebuild-read-model`.
        "ALTER TABLE batches ADD COLUMN name_template TEXT;",
    ),
    (
        13,
        # A Telegram chat reached by its username and by its id is one chat: every name
        # it was reached by (`alias`, as the catalog writes names) maps to the name its
        # messages are stored under, so they are not listed (nor downloaded) twice.
        """
        CREATE TABLE chat_aliases (
            alias   TEXT PRIMARY KEY,
            peer_id BIGINT NOT NULL,
            chat    TEXT NOT NULL
        );
        CREATE INDEX chat_aliases_by_peer ON chat_aliases (peer_id);
        """,
    ),
    (
        14,
        # A chat first reached by a watch rule is synced from the rule's start on; the
        # history at and below `history_unread_through` was never read, and the next
        # sync a user asks for reads it (then it is NULL, as for any synced chat).
        "ALTER TABLE chat_sync ADD COLUMN history_unread_through BIGINT;",
    ),
]

READ_MODEL_TABLES = ("batch_files", "batches", "jobs", "projection_state")


async def migrate(conn: asyncpg.Connection, schema: str) -> int:
    """Bring `schema` up to date; safe to run concurrently from several processes."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"tgdl-migrate:{schema}")
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(f'SET LOCAL search_path TO "{schema}"')
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        applied = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, sql in MIGRATIONS:
            if version not in applied:
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
        return LATEST_VERSION


async def migrate_database(dsn: str, schema: str) -> int:
    """Connect, migrate `schema`, disconnect (`tgdl migrate`; services only verify)."""
    conn = await connect(dsn, schema)
    try:
        return await migrate(conn, schema)
    finally:
        await conn.close()


class SchemaOutdated(RuntimeError):
    """The database schema is missing or older than this release expects."""


LATEST_VERSION = max(v for v, _ in MIGRATIONS)


async def verify_schema(dsn: str, schema: str) -> int:
    """Check that `migrate` brought `schema` to this release's version; services call
    this at start instead of migrating themselves. Returns the version."""
    conn = await connect(dsn, schema)
    try:
        exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
        version = await conn.fetchval("SELECT max(version) FROM schema_migrations") if exists \
            else None
    finally:
        await conn.close()
    if version is None or version < LATEST_VERSION:
        found = "no tables" if version is None else f"version {version}"
        raise SchemaOutdated(
            f"PostgreSQL schema {schema!r} has {found}, this release needs version "
            f"{LATEST_VERSION}: run `tgdl migrate` (tgdl run and docker compose do it "
            "before starting services)")
    return version


async def truncate_read_model(conn: asyncpg.Connection) -> None:
    """Empty the projection (and its positions) so replaying the streams rebuilds it."""
    await conn.execute(f"TRUNCATE {', '.join(READ_MODEL_TABLES)}")
