"""Queries over the read model (tables written by the projector), shared by the gateway
and the projector's progress snapshots.

The first half holds the status rules as pure functions over plain row mappings (an
asyncpg record or a dict): how a file's row and its job's row become what a client sees,
and how files add up to a batch's counts, overall status and summary sentence. The
second half is the SQL that feeds them.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from tgdl.contracts.api import (
    BatchPage,
    BatchStatusResponse,
    BatchSummary,
    FileStatusBody,
    MessageItem,
    MessagePage,
)
from tgdl.contracts.catalog import CatalogEntry
from tgdl.contracts.paths import download_url, relative_path
from tgdl.contracts.status import (
    FINISHED_BATCH_STATUSES,
    FileStatus,
    JobState,
    OverallStatus,
)
from tgdl.db import catalog
from tgdl.db.positions import load_positions

Row = Mapping[str, Any]

# Columns of `jobs` the rules read; SQL selects them with this prefix next to the file's.
JOB_COLUMNS = (
    "state", "downloaded_size", "total_size", "download_speed", "eta_seconds",
    "wait_seconds", "file_path", "relative_path", "error", "detail", "suggestion",
    "hash_verified", "same_file_as",
)
_JOB_SELECT = ", ".join(f"j.{c} AS job_{c}" for c in JOB_COLUMNS)


# --- status rules (pure) -----------------------------------------------------------------


def _percent(done: int | None, total: int | None) -> int:
    if not total or done is None:
        return 0
    return max(0, min(100, math.floor(100 * done / total)))


def _eta(job: Row) -> int | None:
    if job["eta_seconds"] is not None:
        return job["eta_seconds"]
    speed, total = job["download_speed"], job["total_size"]
    if speed and total is not None:
        return math.ceil(max(0, total - job["downloaded_size"]) / speed)
    return None


def _completed(message_id: int, relative: str | None, file_path: str | None,
               total_size: int | None, already: bool, job: Row | None,
               same_file_as: int | None = None) -> FileStatusBody:
    """`already`: its file was on disk when the batch started; `same_file_as`: it was
    not downloaded but linked to that message's copy of the same Telegram file."""
    fetched = not already and same_file_as is None
    return FileStatusBody(
        message_id=message_id,
        status=FileStatus.completed,
        progress=100,
        file_path=file_path,
        download_url=download_url(relative) if relative else None,
        total_size=total_size,
        already_downloaded=None if fetched else True,
        reason=None if fetched else "same_file" if same_file_as is not None else "file_exists",
        same_file_as=same_file_as,
        # the job that fetched it, when it was checked against Telegram's hashes
        hash_verified=job["hash_verified"] if job and fetched else None,
    )


def file_status(file: Row, job: Row | None) -> FileStatusBody:
    """One file as a client sees it. The batch's own terminal verdict wins; a file with a
    permit shows its job's live state (which may belong to another batch's download)."""
    m = file["message_id"]
    status = FileStatus(file["status"])
    if status is FileStatus.completed:
        return _completed(m, file["relative_path"], file["file_path"], file["total_size"],
                          file["already_downloaded"], job, file.get("same_file_as"))
    if status in (FileStatus.failed, FileStatus.cancelled):
        return FileStatusBody(message_id=m, status=status, total_size=file["total_size"],
                              error=file["error"], detail=file["detail"],
                              suggestion=file["suggestion"])
    if status is FileStatus.paused:  # its job was stopped: what its .part keeps, nothing live
        kept = job["downloaded_size"] if job is not None else None
        return FileStatusBody(message_id=m, status=status, total_size=file["total_size"],
                              downloaded_size=kept, progress=_percent(kept, file["total_size"]))
    if status is FileStatus.pending or job is None or job["state"] == JobState.queued:
        shown = FileStatus.pending if status is FileStatus.pending else FileStatus.queued
        return FileStatusBody(message_id=m, status=shown, total_size=file["total_size"])
    state = JobState(job["state"])
    if state is JobState.completed:
        return _completed(m, job["relative_path"] or file["relative_path"],
                          job["file_path"] or file["file_path"],
                          job["total_size"] or file["total_size"], already=False, job=job,
                          same_file_as=job.get("same_file_as"))
    if state in (JobState.failed, JobState.cancelled):
        return FileStatusBody(message_id=m, status=FileStatus(state), total_size=file["total_size"],
                              error=job["error"], detail=job["detail"],
                              suggestion=job["suggestion"])
    total = job["total_size"] if job["total_size"] is not None else file["total_size"]
    waiting = state is JobState.waiting  # a flood wait: the file waits, it has not failed
    return FileStatusBody(
        message_id=m,
        status=FileStatus.waiting if waiting else FileStatus.downloading,
        progress=_percent(job["downloaded_size"], total),
        downloaded_size=job["downloaded_size"],
        total_size=total,
        download_speed=job["download_speed"] or 0,
        estimated_time_remaining=_eta(job),
        wait_seconds=job["wait_seconds"] if waiting else None,
    )


def n_files(n: int) -> str:
    """'1 file', '3 files'."""
    return f"{n} file" if n == 1 else f"{n} files"


def summary_sentence(overall: OverallStatus, total: int, counts: Mapping[FileStatus, int]) -> str:
    """A plain sentence for people, e.g. "18 of 20 files completed, 2 failed"."""
    def c(status: FileStatus) -> int:
        return counts.get(status, 0)

    F = FileStatus
    if overall is OverallStatus.cancelled:
        parts = [f"Cancelled: {n_files(c(F.completed))} completed"]
        if c(F.failed):
            parts.append(f"{c(F.failed)} failed")
        parts.append(f"{c(F.cancelled)} stopped")
        return ", ".join(parts)
    parts = [f"{c(F.completed)} of {n_files(total)} completed"]
    if overall is OverallStatus.paused:
        parts[0] = f"Paused: {parts[0]}"
    if c(F.paused):
        parts.append(f"{c(F.paused)} paused")
    if c(F.downloading):
        parts.append(f"{c(F.downloading)} downloading")
    if c(F.waiting):
        parts.append(f"{c(F.waiting)} paused by a Telegram rate limit")
    queued = c(F.pending) + c(F.queued)
    if queued:
        parts.append(f"{queued} waiting for {'its' if queued == 1 else 'their'} turn")
    if c(F.failed):
        parts.append(f"{c(F.failed)} failed")
    if c(F.cancelled):
        parts.append(f"{c(F.cancelled)} cancelled")
    return ", ".join(parts)


def overall_status(batch_status: str, files: Sequence[FileStatusBody]) -> OverallStatus:
    if batch_status in FINISHED_BATCH_STATUSES or batch_status == OverallStatus.paused:
        return OverallStatus(batch_status)
    if any(f.status is not FileStatus.pending for f in files):
        return OverallStatus.in_progress
    return OverallStatus.pending


def batch_status_of(batch: Row, files: Sequence[FileStatusBody]) -> BatchStatusResponse:
    counts = Counter(f.status for f in files)
    overall = overall_status(batch["status"], files)
    total = batch["total_files"]
    F = FileStatus
    return BatchStatusResponse(
        batch_id=batch["batch_id"],
        total_files=total,
        completed=counts[F.completed],
        downloading=counts[F.downloading] + counts[F.waiting],
        failed=counts[F.failed],
        pending=counts[F.pending] + counts[F.queued],
        cancelled=counts[F.cancelled],
        paused=counts[F.paused],
        overall_status=overall,
        finished=overall in FINISHED_BATCH_STATUSES,
        summary=summary_sentence(overall, total, counts),
        max_concurrent=batch["max_concurrent"],
        priority=batch.get("priority"),
        files=list(files),
    )


# A file that is downloading (or waiting) always carries these, null when not known yet.
LIVE_FIELDS = ("downloaded_size", "total_size", "download_speed", "estimated_time_remaining")


def file_body(file: FileStatusBody) -> dict[str, Any]:
    """The wire form of one file: fields that do not apply to its status are left out
    (as in the original examples), except the live numbers of a running file."""
    body = file.model_dump(mode="json", exclude_none=True)
    if file.status in (FileStatus.downloading, FileStatus.waiting):
        live = (*LIVE_FIELDS, "wait_seconds") if file.status is FileStatus.waiting \
            else LIVE_FIELDS
        for key in live:
            body.setdefault(key, None)
    return body


def status_body(status: BatchStatusResponse) -> dict[str, Any]:
    """The wire form of a batch status, the same over HTTP and on NATS."""
    body = status.model_dump(mode="json", exclude_none=True, exclude={"files"})
    body["files"] = [file_body(f) for f in status.files]
    return body


def snapshot_json(status: BatchStatusResponse) -> bytes:
    return json.dumps(status_body(status), separators=(",", ":")).encode()


# A file's status -> the message list's download_state.
DOWNLOAD_STATE: dict[FileStatus, str] = {
    FileStatus.pending: "queued",
    FileStatus.queued: "queued",
    FileStatus.downloading: "downloading",
    FileStatus.waiting: "waiting",
    FileStatus.paused: "paused",
    FileStatus.completed: "downloaded",
    FileStatus.failed: "failed",
    FileStatus.cancelled: "cancelled",
}


def split_job(row: Row) -> Row | None:
    """The `job_`-prefixed columns of a joined row, or None when no job row matched."""
    if row["job_state"] is None:
        return None
    return {c: row[f"job_{c}"] for c in JOB_COLUMNS}


# --- SQL ---------------------------------------------------------------------------------

_BATCH_SQL = f"""
SELECT b.batch_id, b.status AS batch_status, b.total_files, b.max_concurrent, b.priority,
       f.message_id, f.status, f.total_size, f.file_path, f.relative_path,
       f.already_downloaded, f.same_file_as, f.error, f.detail, f.suggestion,
       {_JOB_SELECT}
FROM batches b
LEFT JOIN batch_files f ON f.batch_id = b.batch_id
LEFT JOIN jobs j ON j.job_id = f.job_id
WHERE b.batch_id = $1
ORDER BY f.position
"""


async def batch_status(conn: asyncpg.Connection | asyncpg.Pool,
                       batch_id: str) -> BatchStatusResponse | None:
    rows = await conn.fetch(_BATCH_SQL, batch_id)  # one statement: one consistent snapshot
    if not rows:
        return None
    first = rows[0]
    batch = {"batch_id": first["batch_id"], "status": first["batch_status"],
             "total_files": first["total_files"], "max_concurrent": first["max_concurrent"],
             "priority": first["priority"]}
    files = [file_status(r, split_job(r)) for r in rows if r["message_id"] is not None]
    return batch_status_of(batch, files)


# The row that says most about a message now: a batch still waiting for it (the newest
# such), else the newest batch that asked for it.
_LATEST_FILE = f"""
SELECT f.message_id, f.batch_id, f.status, f.total_size, f.file_path, f.relative_path,
       f.already_downloaded, f.same_file_as, f.error, f.detail, f.suggestion,
       {_JOB_SELECT}
FROM unnest($1::bigint[]) AS m(message_id)
CROSS JOIN LATERAL (
    SELECT f.* FROM batch_files f
    JOIN batches b ON b.batch_id = f.batch_id
    WHERE f.message_id = m.message_id
    ORDER BY f.status IN ('pending', 'queued', 'paused') DESC, b.created_at DESC, b.batch_id DESC
    LIMIT 1
) f
LEFT JOIN jobs j ON j.job_id = f.job_id
"""

_SINGLE_REQUEST = """
SELECT b.batch_id FROM batch_files f JOIN batches b ON b.batch_id = f.batch_id
WHERE f.message_id = $1 AND b.kind = 'single'
ORDER BY b.created_at DESC, b.batch_id DESC LIMIT 1
"""


class MessageDownloadStatus(FileStatusBody):
    """One message's latest download state, and the single-file request tracking it."""

    download_id: str | None = None


async def message_status(conn: asyncpg.Connection | asyncpg.Pool,
                         message_id: int) -> MessageDownloadStatus | None:
    rows = await conn.fetch(_LATEST_FILE, [message_id])
    if not rows:
        return None  # never requested
    body = file_status(rows[0], split_job(rows[0]))
    single = await conn.fetchval(_SINGLE_REQUEST, message_id)
    return MessageDownloadStatus(**body.model_dump(), download_id=single)


async def single_request(conn: asyncpg.Connection | asyncpg.Pool,
                         message_id: int) -> str | None:
    """The newest single-file request (one-file batch) of the message, if any."""
    return await conn.fetchval(_SINGLE_REQUEST, message_id)


# Where files are and the size each must have -> which of them are there, complete. The
# message list asks the media folder, not only the batches: a file deleted since it was
# downloaded is not "downloaded", and one that is there at its size (an earlier data
# folder, another tool) is, as a start would find it.
CompleteOnDisk = Callable[[Sequence[tuple[str, int | None]]], Awaitable[Sequence[bool]]]
# States the disk may overrule: nothing is moving the file now.
_SETTLED = ("not_downloaded", "downloaded", "failed", "cancelled")


async def message_page(conn: asyncpg.Connection, offset: int, limit: int,
                       media_only: bool = False,
                       where: catalog.MessageFilter | None = None,
                       on_disk: CompleteOnDisk | None = None,
                       name_template: str | None = None) -> MessagePage:
    """A page of the catalog, each message with its latest download state; with `on_disk`,
    a settled state says what the media folder holds (its file at the path its batch
    wrote, else where `name_template` puts it)."""
    entries, total = await catalog.page(conn, offset, limit, media_only, where)
    rows = await conn.fetch(_LATEST_FILE, [e.message_id for e in entries])
    latest = {r["message_id"]: (r, file_status(r, split_job(r))) for r in rows}
    items = []
    for e in entries:
        _, shown = latest.get(e.message_id, (None, None))
        if e.media_kind is None:
            state = "no_media"
        elif shown is None:
            state = "not_downloaded"
        else:
            state = DOWNLOAD_STATE[shown.status]
        items.append(MessageItem(
            message_id=e.message_id,
            chat=e.chat,
            telegram_message_id=e.telegram_message_id,
            media_type=e.media_kind.value if e.media_kind else None,
            file_name=e.file_name,
            mime_type=e.mime_type,
            size=e.size,
            download_state=state,
            download_url=shown.download_url if shown and state == "downloaded" else None,
            date=e.date,
            caption=e.caption,
        ))
    if on_disk is not None:
        await _as_on_disk(items, entries, latest, on_disk, name_template)
    return MessagePage(items=items, total=total, offset=offset, limit=limit)


async def _as_on_disk(items: list[MessageItem], entries: Sequence[CatalogEntry],
                      latest: Mapping[int, tuple[Row, FileStatusBody]],
                      on_disk: CompleteOnDisk, name_template: str | None) -> None:
    checked: list[tuple[MessageItem, str]] = []
    wanted: list[tuple[str, int | None]] = []
    for item, e in zip(items, entries, strict=True):
        if item.download_state not in _SETTLED:
            continue
        row = latest.get(e.message_id, (None, None))[0]
        path = row["relative_path"] if row is not None else None
        if path is None:
            try:
                path = str(relative_path(e, name_template))
            except ValueError:  # a template that cannot name it: it is nowhere
                continue
        checked.append((item, path))
        wanted.append((path, e.size if e.size is not None else
                       row["total_size"] if row is not None else None))
    for (item, path), present in zip(checked, await on_disk(wanted), strict=True):
        if present:
            item.download_state, item.download_url = "downloaded", download_url(path)
        elif item.download_state == "downloaded":
            item.download_state, item.download_url = "not_downloaded", None


# --- retrying a batch's failures ----------------------------------------------------------

# Failures another try cannot mend: the message has no media, or is gone from Telegram.
FINAL_ERRORS = ("no_media", "message_deleted")


@dataclass(frozen=True)
class RetryPlan:
    """A batch's files worth another try (failed or cancelled, in the batch's order) and
    the settings it ran with."""

    message_ids: list[int]
    max_concurrent: int
    priority: str
    name_template: str | None


async def retry_plan(conn: asyncpg.Connection | asyncpg.Pool, batch_id: str
                     ) -> RetryPlan | None:
    """None when there is no such batch."""
    batch = await conn.fetchrow(
        "SELECT max_concurrent, priority, name_template FROM batches WHERE batch_id = $1",
        batch_id)
    if batch is None:
        return None
    rows = await conn.fetch(
        "SELECT message_id FROM batch_files WHERE batch_id = $1"
        " AND status = ANY($2::text[]) AND coalesce(error, '') <> ALL($3::text[])"
        " ORDER BY position",
        batch_id, [FileStatus.failed.value, FileStatus.cancelled.value], list(FINAL_ERRORS))
    return RetryPlan([r["message_id"] for r in rows], batch["max_concurrent"],
                     batch["priority"], batch["name_template"])


# --- the batch list ----------------------------------------------------------------------


def _bytes_done(f: FileStatusBody) -> int:
    if f.status is FileStatus.completed:
        return f.total_size or 0
    if f.status in (FileStatus.downloading, FileStatus.waiting, FileStatus.paused):
        return f.downloaded_size or 0
    return 0


def batch_summary(batch: Row, files: Sequence[FileStatusBody]) -> BatchSummary:
    """A batch's counts and overall progress: the share of the requested bytes on disk
    (a file that failed or was cancelled counts as none), or of the files' own progress
    while some size is not known yet."""
    status = batch_status_of(batch, files)
    done = sum(_bytes_done(f) for f in files)
    sizes = [f.total_size for f in files]
    total = sum(s or 0 for s in sizes) if files and None not in sizes else None
    if status.overall_status is OverallStatus.completed:
        progress = 100
    elif total:
        progress = _percent(done, total)
    elif files:
        progress = math.floor(sum(100 if f.status is FileStatus.completed else f.progress
                                  for f in files) / len(files))
    else:
        progress = 0
    return BatchSummary(
        **status.model_dump(exclude={"files", "max_concurrent", "priority"}),
        kind=batch["kind"], created_at=batch["created_at"],
        finished_at=batch["finished_at"], max_concurrent=batch["max_concurrent"],
        force=batch["force"], rule_id=batch.get("rule_id"),
        priority=batch["priority"], progress=progress,
        downloaded_size=done, total_size=total,
        download_speed=sum(f.download_speed or 0 for f in files
                           if f.status is FileStatus.downloading),
    )


def _within(batch: str, chats: str) -> str:
    """SQL: every file of batch `batch` whose message the catalog knows is in one of the
    chats of the text[] `chats` (chat_key()s)."""
    return ("NOT EXISTS (SELECT 1 FROM batch_files bf JOIN catalog c USING (message_id)"
            f" WHERE bf.batch_id = {batch}"
            f" AND NOT {catalog.chat_key_sql('c.chat')} = ANY({chats}::text[]))")


async def batch_within(conn: asyncpg.Connection | asyncpg.Pool, batch_id: str,
                       chats: frozenset[str]) -> bool:
    """Whether a caller limited to `chats` may see the batch: all its files are in them."""
    return await conn.fetchval(f"SELECT {_within('$1', '$2')}", batch_id, sorted(chats))


def _batch_page_sql(where: str) -> str:
    return f"""
SELECT b.batch_id, b.kind, b.status AS batch_status, b.total_files, b.max_concurrent,
       b.force, b.priority, b.created_at, b.finished_at, b.rule_id,
       f.message_id, f.status, f.total_size, f.file_path, f.relative_path,
       f.already_downloaded, f.same_file_as, f.error, f.detail, f.suggestion,
       {_JOB_SELECT}
FROM (SELECT * FROM batches b {where}
      ORDER BY created_at DESC, batch_id DESC LIMIT $1 OFFSET $2) b
LEFT JOIN batch_files f ON f.batch_id = b.batch_id
LEFT JOIN jobs j ON j.job_id = f.job_id
ORDER BY b.created_at DESC, b.batch_id DESC, f.position
"""


async def batch_page(conn: asyncpg.Connection | asyncpg.Pool, offset: int, limit: int,
                     chats: frozenset[str] | None = None) -> BatchPage:
    """Batches newest first, each with its overall progress; with `chats`, only those
    all of whose files are in them (see batch_within)."""
    if chats is None:
        total = await conn.fetchval("SELECT count(*) FROM batches")
        rows = await conn.fetch(_batch_page_sql(""), limit, offset)
    else:
        total = await conn.fetchval(
            f"SELECT count(*) FROM batches b WHERE {_within('b.batch_id', '$1')}",
            sorted(chats))
        rows = await conn.fetch(_batch_page_sql(f"WHERE {_within('b.batch_id', '$3')}"),
                                limit, offset, sorted(chats))
    batches: dict[str, tuple[dict[str, Any], list[FileStatusBody]]] = {}
    for r in rows:
        if r["batch_id"] not in batches:
            batch = {"batch_id": r["batch_id"], "status": r["batch_status"],
                     **{k: r[k] for k in ("kind", "total_files", "max_concurrent", "force",
                                          "priority", "created_at", "finished_at", "rule_id")}}
            batches[r["batch_id"]] = (batch, [])
        if r["message_id"] is not None:
            batches[r["batch_id"]][1].append(file_status(r, split_job(r)))
    items = [batch_summary(batch, files) for batch, files in batches.values()]
    return BatchPage(items=items, total=total, offset=offset, limit=limit)


# --- operational counts (the gateway's /metrics) -----------------------------------------


async def operational_counts(conn: asyncpg.Connection) -> dict[str, Any]:
    """What the read model says about the downloads as a whole, for metrics: jobs by
    state and failure reason, open batches' permits, batches by status, projector
    positions. Counts of rows that are never deleted, so they only grow (a rebuild
    replays to the same rows)."""
    jobs = await conn.fetch(
        "SELECT state, coalesce(error, '') AS reason, count(*) AS n,"
        " coalesce(sum(downloaded_size), 0) AS bytes,"
        " coalesce(max(wait_seconds), 0) AS longest_wait"
        " FROM jobs GROUP BY state, coalesce(error, '')")
    # A file holds one of its batch's permits from PermitGranted until it ends.
    permits = await conn.fetch(
        "SELECT b.batch_id, b.max_concurrent, count(f.message_id) FILTER ("
        "   WHERE f.status NOT IN ('pending', 'paused', 'completed', 'failed', 'cancelled'))"
        "  AS in_use"
        " FROM batches b LEFT JOIN batch_files f ON f.batch_id = b.batch_id"
        " WHERE b.status NOT IN ('completed', 'failed', 'cancelled')"
        " GROUP BY b.batch_id, b.max_concurrent ORDER BY b.batch_id")
    batches = await conn.fetch("SELECT status, count(*) AS n FROM batches GROUP BY status")
    return {
        "jobs": [dict(r) for r in jobs],
        "permits": [dict(r) for r in permits],
        "batches": {r["status"]: r["n"] for r in batches},
        "positions": await load_positions(conn),
    }
