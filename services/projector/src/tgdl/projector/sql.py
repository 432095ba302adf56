"""The thin SQL side of the fold: writes row changes, loads and stores stream positions.

Only the projector writes these tables, and it does so from a single task, so no row
locks are taken: a job change is merged in memory against the row as loaded in the
same transaction, then written back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields

import asyncpg

from tgdl.contracts.status import TERMINAL_FILE_STATUSES, FileStatus
from tgdl.projector.fold import (
    BatchRow,
    CancelFiles,
    Change,
    DeleteBatch,
    FileRow,
    InsertBatch,
    JobChange,
    JobRow,
    UpdateBatch,
    UpdateFile,
)

BATCH_COLUMNS = tuple(f.name for f in fields(BatchRow))
FILE_COLUMNS = tuple(f.name for f in fields(FileRow))
JOB_COLUMNS = tuple(f.name for f in fields(JobRow))


def _values(row: BatchRow | FileRow | JobRow) -> tuple:
    return tuple(getattr(row, f.name) for f in fields(row))


def _insert(table: str, columns: Sequence[str], conflict: str) -> str:
    values = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({values}) {conflict}"


_INSERT_BATCH = _insert("batches", BATCH_COLUMNS, "ON CONFLICT (batch_id) DO NOTHING")
_INSERT_FILE = _insert("batch_files", FILE_COLUMNS, "ON CONFLICT (batch_id, message_id) DO NOTHING")
_UPSERT_JOB = _insert(
    "jobs", JOB_COLUMNS,
    "ON CONFLICT (job_id) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in JOB_COLUMNS if c != "job_id"),
)
_SELECT_JOBS = f"SELECT {', '.join(JOB_COLUMNS)} FROM jobs WHERE job_id = ANY($1::text[])"
_CANCEL_FILES = """
UPDATE batch_files SET status = $3
WHERE batch_id = $1 AND message_id = ANY($2::bigint[]) AND status <> ALL($4::text[])
"""
_TERMINAL_FILE_STATUSES = sorted(TERMINAL_FILE_STATUSES)


def _assignments(columns: Iterable[str], allowed: Sequence[str], first: int) -> str:
    unknown = set(columns) - set(allowed)
    if unknown:  # column names are spliced into SQL: only ever the row's own fields
        raise ValueError(f"unknown columns {sorted(unknown)}")
    return ", ".join(f"{c} = ${i}" for i, c in enumerate(columns, start=first))


@dataclass
class Written:
    """What a transaction changed: the batches and jobs whose rows were written."""

    batches: set[str] = field(default_factory=set)
    jobs: set[str] = field(default_factory=set)


async def apply_changes(conn: asyncpg.Connection, changes: Sequence[Change]) -> Written:
    written = Written()
    job_changes: list[JobChange] = []
    for change in changes:
        match change:
            case InsertBatch(batch=batch, files=files):
                await conn.execute(_INSERT_BATCH, *_values(batch))
                await conn.executemany(_INSERT_FILE, [_values(f) for f in files])
                written.batches.add(batch.batch_id)
            case UpdateFile(batch_id=b, message_id=m, values=values):
                sets = _assignments(values, FILE_COLUMNS, first=3)
                await conn.execute(
                    f"UPDATE batch_files SET {sets} WHERE batch_id = $1 AND message_id = $2",
                    b, m, *values.values(),
                )
                written.batches.add(b)
            case CancelFiles(batch_id=b, message_ids=ids):
                await conn.execute(_CANCEL_FILES, b, list(ids), FileStatus.cancelled,
                                   _TERMINAL_FILE_STATUSES)
                written.batches.add(b)
            case UpdateBatch(batch_id=b, values=values):
                sets = _assignments(values, BATCH_COLUMNS, first=2)
                await conn.execute(
                    f"UPDATE batches SET {sets} WHERE batch_id = $1", b, *values.values()
                )
                written.batches.add(b)
            case DeleteBatch(batch_id=b):
                # batch_files go with it (ON DELETE CASCADE); only a finished batch
                await conn.execute("DELETE FROM batches WHERE batch_id = $1 "
                                   "AND finished_at IS NOT NULL", b)
            case _:
                job_changes.append(change)
    written.jobs = await merge_jobs(conn, job_changes)
    return written


async def merge_jobs(conn: asyncpg.Connection, changes: Sequence[JobChange]) -> set[str]:
    """Merge job changes, in order, into the rows as they stand; write the changed ones."""
    if not changes:
        return set()
    rows = await conn.fetch(_SELECT_JOBS, sorted({c.job_id for c in changes}))
    current = {r["job_id"]: JobRow(**dict(r)) for r in rows}
    changed: dict[str, JobRow] = {}
    for change in changes:
        merged = change.merge(current.get(change.job_id))
        if merged is not None:
            current[change.job_id] = changed[change.job_id] = merged
    if changed:
        await conn.executemany(_UPSERT_JOB, [_values(changed[j]) for j in sorted(changed)])
    return set(changed)


async def open_batches_of_jobs(conn: asyncpg.Connection, job_ids: Iterable[str]) -> set[str]:
    """Unfinished batches whose files follow one of these jobs."""
    ids = list(job_ids)
    if not ids:
        return set()
    rows = await conn.fetch(
        """SELECT DISTINCT f.batch_id FROM batch_files f
           JOIN batches b ON b.batch_id = f.batch_id
           WHERE f.job_id = ANY($1::text[]) AND b.finished_at IS NULL""",
        ids,
    )
    return {r["batch_id"] for r in rows}


async def load_positions(conn: asyncpg.Connection) -> dict[str, int]:
    rows = await conn.fetch("SELECT stream, last_seq FROM projection_positions")
    return {r["stream"]: r["last_seq"] for r in rows}


async def save_positions(conn: asyncpg.Connection, positions: Mapping[str, int]) -> None:
    await conn.executemany(
        """INSERT INTO projection_positions (stream, last_seq) VALUES ($1, $2)
           ON CONFLICT (stream) DO UPDATE SET last_seq = EXCLUDED.last_seq""",
        list(positions.items()),
    )


async def try_lock_projection(conn: asyncpg.Connection, schema: str) -> bool:
    """One projector per schema: the lock lives as long as `conn` (a session lock)."""
    return await conn.fetchval(
        "SELECT pg_try_advisory_lock(hashtext($1))", f"tgdl-projector:{schema}"
    )
