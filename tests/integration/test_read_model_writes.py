"""How many read-model rows the projector writes per file, counted by PostgreSQL: a row
trigger on every read-model table counts each row inserted, updated or deleted (what
pg_stat_user_tables calls n_tup_ins + n_tup_upd + n_tup_del, but exact and at once).

A batch of tiny files goes through as the orchestrator and the downloaders would write
it, applied by a real projector on real PostgreSQL in two ways: every message in its own
transaction (the most a file can cost), and each moment's messages together (a batch's
start; a file's end: its outcome, FileCompleted, the next permit and its dispatch), as the
projector's writer gathers them. Both must leave the same rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tgdl.bus.topology import QueuePolicy, ensure_topology
from tgdl.contracts.catalog import CatalogEntry, MediaKind
from tgdl.contracts.events import (
    BatchFinished,
    BatchStarted,
    FileCompleted,
    JobDispatched,
    PermitGranted,
    dump_event,
)
from tgdl.contracts.jobs import DownloadOutcome
from tgdl.db.connection import connect
from tgdl.db.schema import READ_MODEL_TABLES, migrate
from tgdl.projector.projector import Delivery, Projector
from tgdl.projector.settings import ProjectorSettings

FILES, CONCURRENT = 20, 4
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
# Rows written per file, at most. Measured: 13.2 and 11.2 while every file event also
# wrote its batch's row, and a row was written even when nothing in it changed; 9.2 and
# 7.0 then (3 file rows, 2 job rows, the rest stream positions); 8.2 and 5.0 since a
# dispatch writes no job row and a transaction stores all its positions in one row.
ONE_PER_TRANSACTION = 8.2
GATHERED = 5.0


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def moments(b: str) -> list[list[tuple[str, bytes]]]:
    """Batch `b`'s messages, as (stream kind, body), grouped by what arrives together."""
    def ev(*events) -> list[tuple[str, bytes]]:
        return [("events", dump_event(e)) for e in events]

    def granted(m: int, t: float) -> list[tuple[str, bytes]]:
        return ev(PermitGranted(batch_id=b, at=at(t), message_id=m, job_id=f"{b}:{m}"))

    def dispatched(m: int, t: float) -> list[tuple[str, bytes]]:
        return ev(JobDispatched(batch_id=b, at=at(t), message_id=m, job_id=f"{b}:{m}",
                                attached=False))

    entries = [CatalogEntry(message_id=m, chat="chan", telegram_message_id=m,
                            media_kind=MediaKind.photo, file_name=f"p{m}.jpg", size=10_000)
               for m in range(1, FILES + 1)]
    first = range(1, CONCURRENT + 1)
    out = [
        ev(BatchStarted(batch_id=b, at=at(0), kind="batch", max_concurrent=CONCURRENT,
                        force=False, requested_ids=[e.message_id for e in entries],
                        to_download=entries, already_downloaded=[], failed_to_start=[]))
        + [g for m in first for g in granted(m, 0)],
        [d for m in first for d in dispatched(m, 0)],
    ]
    for m in range(1, FILES + 1):
        t = m
        outcome = DownloadOutcome(job_id=f"{b}:{m}", message_id=m, status="completed",
                                  parties=[b], file_path=f"/m/p{m}.jpg",
                                  relative_path=f"p{m}.jpg", size=10_000, at=at(t))
        moment = [("outcomes", outcome.model_dump_json().encode())]
        moment += ev(FileCompleted(batch_id=b, at=at(t), message_id=m, job_id=f"{b}:{m}",
                                   file_path=f"/m/p{m}.jpg", relative_path=f"p{m}.jpg",
                                   size=10_000))
        nxt = m + CONCURRENT
        if nxt <= FILES:
            moment += granted(nxt, t) + dispatched(nxt, t)
        elif m == FILES:
            moment += ev(BatchFinished(batch_id=b, at=at(t), overall_status="completed",
                                       completed=FILES, failed=0))
        out.append(moment)
    return out


@pytest.fixture
def settings(servers, isolation) -> ProjectorSettings:
    return ProjectorSettings(
        nats_url=servers.nats_url, database_url=servers.database_url,
        namespace=isolation.namespace, db_schema=isolation.schema,
        media_root=isolation.media_root,
    )


@pytest.fixture
async def db(settings):
    conn = await connect(settings.database_url, settings.db_schema)
    await migrate(conn, settings.db_schema)
    s = settings.db_schema
    await conn.execute(f"""
        CREATE TABLE "{s}".row_writes (tbl TEXT PRIMARY KEY, n BIGINT NOT NULL);
        CREATE FUNCTION "{s}".count_row_write() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO "{s}".row_writes VALUES (TG_TABLE_NAME, 1)
            ON CONFLICT (tbl) DO UPDATE SET n = "{s}".row_writes.n + 1;
            RETURN NULL;
        END $$;
    """)
    for table in READ_MODEL_TABLES:
        await conn.execute(f'CREATE TRIGGER count_writes AFTER INSERT OR UPDATE OR DELETE '
                           f'ON "{s}".{table} FOR EACH ROW EXECUTE FUNCTION '
                           f'"{s}".count_row_write()')
    yield conn
    await conn.close()


@pytest.fixture
async def projector(settings, nc, db):
    # Started on empty streams: its consumers deliver nothing, the test applies.
    await ensure_topology(nc.jetstream(), settings.names, QueuePolicy())
    p = Projector(settings, nc, publish_snapshots=False)
    await p.start()
    yield p
    await p.stop()


async def writes(db) -> dict[str, int]:
    return {r["tbl"]: r["n"] for r in await db.fetch("SELECT tbl, n FROM row_writes")}


def since(before: dict[str, int], now: dict[str, int]) -> dict[str, int]:
    return {t: n - before.get(t, 0) for t, n in now.items() if n - before.get(t, 0)}


async def test_rows_written_per_file_stay_few_and_gathering_changes_no_row(projector, db,
                                                                          settings):
    names = settings.names
    streams = {"events": names.events_stream, "outcomes": names.outcomes_stream}
    seq = {"events": 0, "outcomes": 0}

    def deliveries(moment: list[tuple[str, bytes]]) -> list[Delivery]:
        out = []
        for kind, body in moment:
            seq[kind] += 1
            out.append(Delivery(streams[kind], seq[kind], body))
        return out

    start = await writes(db)
    for moment in moments("a"):
        for d in deliveries(moment):
            assert await projector.apply([d]) == 1
    alone = since(start, await writes(db))

    start = await writes(db)
    for moment in moments("b"):
        assert await projector.apply(deliveries(moment)) == len(moment)
    gathered = since(start, await writes(db))

    per_file_alone = sum(alone.values()) / FILES
    per_file_gathered = sum(gathered.values()) / FILES
    assert per_file_alone <= ONE_PER_TRANSACTION, alone
    assert per_file_gathered <= GATHERED, gathered
    # A file's events never write its batch's row: the batch row is inserted and finished.
    assert alone["batches"] == gathered["batches"] == 2

    # The same rows either way, batch id aside.
    def rows(records, b):
        return sorted(tuple(v.replace(f"{b}:", "") if isinstance(v, str) else v
                            for k, v in r.items() if k != "batch_id") for r in records)

    for query in ("SELECT * FROM batch_files WHERE batch_id = $1",
                  "SELECT * FROM jobs WHERE job_id LIKE $1 || ':%'",
                  "SELECT * FROM batches WHERE batch_id = $1"):
        a = rows(await db.fetch(query, "a"), "a")
        assert a == rows(await db.fetch(query, "b"), "b") and a
