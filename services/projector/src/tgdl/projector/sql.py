"""The thin SQL side of the fold: writes row changes, loads and stores stream positions.

Only the projector writes these tables, and it does so from a single task, so no row
locks are taken: a job change is merged in memory against the row as loaded in the
same transaction, then written back.

Each row is written at most once per transaction and only when it changes: the changes
of one transaction are coalesced first (`coalesce`), an update that would leave a row
as it is matches no row, and a job row merged back to what it was is not written.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, replace

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


def coalesce(changes: Sequence[Change]) -> list[Change]:
    """The same changes with each batch and file row written once: updates of a row
    inserted earlier in the list go into its insert, later updates of a row into its
    first update. Cancelling or deleting a batch's files selects rows by their state, so
    updates of that batch after it are not moved before it. Job changes are merged per
    job by `merge_jobs` and pass through as they are."""
    out: list[Change] = []
    inserted: dict[str, tuple[int, dict[int, int]]] = {}  # batch -> (its insert, file -> row)
    file_updates: dict[tuple[str, int], int] = {}
    batch_updates: dict[str, int] = {}
    for change in changes:
        match change:
            case InsertBatch(batch=batch, files=files):
                rows = {f.message_id: i for i, f in enumerate(files)}
                inserted[batch.batch_id] = (len(out), rows)
                out.append(change)
            case UpdateFile(batch_id=b, message_id=m, values=values):
                if b in inserted and m in inserted[b][1]:
                    # BatchStarted opens its log (appended at sequence 0), so the insert
                    # never meets an existing row that these values would miss.
                    at, rows = inserted[b]
                    ins = out[at]
                    assert isinstance(ins, InsertBatch)
                    files = list(ins.files)
                    files[rows[m]] = replace(files[rows[m]], **values)
                    out[at] = InsertBatch(ins.batch, tuple(files))
                elif (b, m) in file_updates:
                    at = file_updates[(b, m)]
                    first = out[at]
                    assert isinstance(first, UpdateFile)
                    out[at] = UpdateFile(b, m, {**first.values, **values})
                else:
                    file_updates[(b, m)] = len(out)
                    out.append(change)
            case UpdateBatch(batch_id=b, values=values):
                if b in inserted:
                    at, _ = inserted[b]
                    ins = out[at]
                    assert isinstance(ins, InsertBatch)
                    out[at] = InsertBatch(replace(ins.batch, **values), ins.files)
                elif b in batch_updates:
                    at = batch_updates[b]
                    first = out[at]
                    assert isinstance(first, UpdateBatch)
                    out[at] = UpdateBatch(b, {**first.values, **values})
                else:
                    batch_updates[b] = len(out)
                    out.append(change)
            case CancelFiles(batch_id=b) | DeleteBatch(batch_id=b):
                inserted.pop(b, None)
                batch_updates.pop(b, None)
                for key in [k for k in file_updates if k[0] == b]:
                    del file_updates[key]
                out.append(change)
            case _:
                out.append(change)
    return out


def _changed(columns: Sequence[str], first: int) -> str:
    """A WHERE condition true only when the update changes the row."""
    params = ", ".join(f"${i}" for i in range(first, first + len(columns)))
    return f"ROW({', '.join(columns)}) IS DISTINCT FROM ROW({params})"


@dataclass
class Written:
    """What a transaction changed: the batches and jobs whose rows were written."""

    batches: set[str] = field(default_factory=set)
    jobs: set[str] = field(default_factory=set)


async def apply_changes(conn: asyncpg.Connection, changes: Sequence[Change]) -> Written:
    written = Written()
    job_changes: list[JobChange] = []
    for change in coalesce(changes):
        match change:
            case InsertBatch(batch=batch, files=files):
                await conn.execute(_INSERT_BATCH, *_values(batch))
                await conn.executemany(_INSERT_FILE, [_values(f) for f in files])
                written.batches.add(batch.batch_id)
            case UpdateFile(batch_id=b, message_id=m, values=values):
                sets = _assignments(values, FILE_COLUMNS, first=3)
                await conn.execute(
                    f"UPDATE batch_files SET {sets} WHERE batch_id = $1 AND message_id = $2 "
                    f"AND {_changed(list(values), first=3)}",
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
                    f"UPDATE batches SET {sets} WHERE batch_id = $1 "
                    f"AND {_changed(list(values), first=2)}", b, *values.values()
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
        if merged is not None and merged != current.get(change.job_id):
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


async def try_lock_projection(conn: asyncpg.Connection, schema: str) -> bool:
    """One projector per schema: the lock lives as long as `conn` (a session lock)."""
    return await conn.fetchval(
        "SELECT pg_try_advisory_lock(hashtext($1))", f"tgdl-projector:{schema}"
    )
