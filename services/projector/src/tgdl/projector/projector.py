"""The projector: follows the batch events, outcomes and progress streams from the
positions stored in PostgreSQL and folds them into the read model.

Each stream is read by an ordered (ephemeral) consumer starting right after its stored
position; the position, not a durable consumer, is the truth. Every delivery lands in
one queue drained by a single writer task, which lets messages gather for `apply_delay`,
then applies whatever has arrived in one transaction together with the new positions (a
redelivered message at or below its stream's position is skipped). Progress takes a
detour through `ProgressBuffer`, so the database sees it at most about once per second;
events and outcomes never wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import asyncpg
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy
from pydantic import ValidationError

from tgdl.contracts.events import parse_events
from tgdl.contracts.jobs import DownloadOutcome, DownloadProgress
from tgdl.db.connection import connect as db_connect
from tgdl.db.connection import create_pool
from tgdl.db.positions import PositionsMoved, load_positions, save_positions
from tgdl.db.schema import truncate_read_model
from tgdl.projector import metrics
from tgdl.projector.fold import ApplyProgress, Change, fold_event, fold_outcome, fold_progress
from tgdl.projector.settings import ProjectorSettings
from tgdl.projector.snapshots import SnapshotPublisher
from tgdl.projector.sql import (
    apply_changes,
    merge_jobs,
    open_batches_of_jobs,
    try_lock_projection,
)
from tgdl.projector.throttle import ProgressBuffer

log = logging.getLogger("tgdl.projector")

RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 5.0)  # seconds between attempts when the DB fails


class ProjectionLocked(RuntimeError):
    """Another projector (or a rebuild) owns this read model right now."""


@dataclass(frozen=True)
class Delivery:
    stream: str
    seq: int
    data: bytes
    stored: float = 0.0  # when the stream stored it (Unix time)


@dataclass
class ProjectorStats:
    transactions: int = 0
    applied: dict[str, int] = field(default_factory=dict)  # messages folded, per stream
    skipped: int = 0  # redeliveries at or below the stored position
    unreadable: int = 0
    progress_flushes: int = 0  # transactions that wrote progress
    progress_rows: int = 0  # job rows written from progress


_STOP = Delivery("", 0, b"")  # queue sentinel: the writer finishes what came before it


class Projector:
    def __init__(self, settings: ProjectorSettings, nc: NATS, *,
                 publish_snapshots: bool = True) -> None:
        self.settings = settings
        self.names = settings.names
        self.stats = ProjectorStats()
        self.positions: dict[str, int] = {}
        self._nc = nc
        self._publish_snapshots = publish_snapshots
        self._queue: asyncio.Queue[Delivery] = asyncio.Queue(maxsize=4 * settings.max_batch)
        self._progress = ProgressBuffer(settings.progress_interval)
        self._advanced = asyncio.Condition()
        self._subs: list = []
        self._lock_conn: asyncpg.Connection | None = None
        self._pool: asyncpg.Pool | None = None
        self._snapshots: SnapshotPublisher | None = None
        self._writer: asyncio.Task | None = None
        self._stopping = False
        self._known_last: dict[str, int] = {}  # the last sequence heard of, per stream
        self._applied_stored: dict[str, float] = {}  # stored time of the newest applied
        self._offered_stored = 0.0  # ...of the newest progress offered to the buffer
        self._started = time.time()

    @property
    def streams(self) -> dict[str, str]:
        """Stream name -> the subjects the projector reads from it."""
        n = self.names
        return {
            n.events_stream: n.all_batch_events,
            n.outcomes_stream: n.all_file_done,
            n.progress_stream: n.all_file_progress,
        }

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self, *, wait_for_lock: bool = True, truncate: bool = False) -> None:
        """Own the read model, load the positions and follow the three streams. A second
        projector on the same schema waits here as a standby (or fails fast). `truncate`
        empties the read model first, so everything is replayed (a rebuild)."""
        s = self.settings
        self._lock_conn = await db_connect(s.database_url, s.db_schema)
        announced = False
        while not await try_lock_projection(self._lock_conn, s.db_schema):
            if not wait_for_lock:
                await self._lock_conn.close()
                self._lock_conn = None
                raise ProjectionLocked(
                    f"another projector is writing schema {s.db_schema!r}; stop it first"
                )
            if not announced:
                log.info("another projector owns schema %s; standing by", s.db_schema)
                announced = True
            await asyncio.sleep(2.0)
        self._pool = await create_pool(s.database_url, s.db_schema, max_size=2)
        async with self._pool.acquire() as conn:
            if truncate:
                await truncate_read_model(conn)
            self.positions = await load_positions(conn)
        if self._publish_snapshots:
            self._snapshots = SnapshotPublisher(self._nc, self._pool, self.names,
                                                s.snapshot_interval)
            self._snapshots.start()
        self._writer = asyncio.create_task(self._write_loop(), name="projector-writer")
        js = self._nc.jetstream()
        for stream, subject in self.streams.items():
            start = self.positions.get(stream, 0) + 1
            last = (await js.stream_info(stream)).state.last_seq
            self._known_last[stream] = max(self._known_last.get(stream, 0), last)
            self._measure(stream)
            if start > last + 1:
                log.warning("stored position %d of %s is beyond its last message %d: was the "
                            "stream recreated? Rebuild the read model (tgdl rebuild-read-model)",
                            start - 1, stream, last)
            self._subs.append(await js.subscribe(
                subject, stream=stream, ordered_consumer=True, cb=self._receiver(stream),
                # Heartbeats every second: an ordered consumer lost with its server (a
                # restarted nats-server, a cluster node) is recreated within seconds,
                # not after the client's default of 10-20 s.
                config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                      opt_start_seq=start, idle_heartbeat=1.0),
            ))
        log.info("projecting from positions %s", self.positions or "{} (from the start)")

    async def stop(self) -> None:
        """Stop reading, apply what already arrived, flush held progress, let go."""
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()
        try:
            if self._writer is not None:
                self._stopping = True
                put = asyncio.create_task(self._queue.put(_STOP))
                try:
                    await self._writer
                except Exception:
                    log.exception("the writer had failed")
                finally:
                    put.cancel()
                    self._writer = None
            if self._snapshots is not None:
                await self._snapshots.stop()
        finally:
            if self._pool is not None:
                await self._pool.close()
            if self._lock_conn is not None:
                await self._lock_conn.close()  # releases the projection lock

    def _receiver(self, stream: str):
        async def receive(msg: Msg) -> None:
            meta = msg.metadata
            seq = meta.sequence.stream
            known = self._known_last.get(stream, 0)
            self._known_last[stream] = max(known, seq + (meta.num_pending or 0))
            # A full queue blocks here, and flow control then holds the server back.
            await self._queue.put(Delivery(stream, seq, msg.data, meta.timestamp.timestamp()))
        return receive

    # --- how far behind -----------------------------------------------------------------

    def lag(self, stream: str) -> int:
        """Messages of `stream` heard of (at start, or from a delivery's pending count)
        and not applied yet."""
        return max(0, self._known_last.get(stream, 0) - self.positions.get(stream, 0))

    def lag_seconds(self, stream: str) -> float:
        if not self.lag(stream):
            return 0.0
        return max(0.0, time.time() - self._applied_stored.get(stream, self._started))

    def _measure(self, stream: str) -> None:
        """Read at scrape time (from the metrics server's thread: plain reads only)."""
        metrics.LAG_MESSAGES.labels(stream).set_function(lambda: self.lag(stream))
        metrics.LAG_SECONDS.labels(stream).set_function(lambda: self.lag_seconds(stream))
        metrics.APPLIED.labels(stream)  # shown from the start, at 0

    # --- waiting for the projection -----------------------------------------------------

    def reached(self, targets: Mapping[str, int]) -> bool:
        return all(self.positions.get(s, 0) >= seq for s, seq in targets.items())

    async def wait_until(self, targets: Mapping[str, int], idle_timeout: float = 30.0) -> None:
        """Until every stream's position reaches its target; TimeoutError if nothing
        advanced for `idle_timeout` seconds."""
        async with self._advanced:
            while not self.reached(targets):
                try:
                    await asyncio.wait_for(self._advanced.wait(), idle_timeout)
                except TimeoutError:
                    raise TimeoutError(
                        f"projection stalled at {self.positions}, waiting for {targets}"
                    ) from None

    async def _advance(self, positions: Mapping[str, int]) -> None:
        self.positions.update(positions)
        async with self._advanced:
            self._advanced.notify_all()

    # --- the writer ---------------------------------------------------------------------

    async def serve(self, stop: asyncio.Event) -> None:
        """Project until `stop` is set (then stop cleanly), or raise if the writer died."""
        assert self._writer is not None, "start() first"
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({stopping, self._writer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if self._writer.done() and not stop.is_set():
            await self._writer  # raises what killed it
            raise RuntimeError("the projector's writer ended unexpectedly")

    async def _write_loop(self) -> None:
        limit = self.settings.max_batch
        done = False
        while not done:
            arrived: list[Delivery] = []
            due = self._progress.due_in()
            if self._queue.empty() and due != 0:
                with contextlib.suppress(TimeoutError):
                    arrived.append(await asyncio.wait_for(self._queue.get(), due))
            if (arrived or not self._queue.empty()) and self.settings.apply_delay > 0 \
                    and self._queue.qsize() < limit and not self._stopping:
                await asyncio.sleep(self.settings.apply_delay)  # let the rest of it arrive
            while not self._queue.empty() and len(arrived) < limit:
                arrived.append(self._queue.get_nowait())
            if self._lock_conn is None or self._lock_conn.is_closed():
                raise ProjectionLocked("lost the database session holding the projection lock")
            now: list[Delivery] = []
            for d in arrived:
                if d is _STOP:
                    done = True
                    break
                if d.stream == self.names.progress_stream:
                    self._offer_progress(d)
                else:
                    now.append(d)
            if now:
                await self._retrying(self.apply, now)
            if self._progress.dirty and (done or self._progress.due_in() == 0):
                await self._retrying(self.flush_progress)

    async def _retrying(self, step, *args) -> None:
        """Run a database step until it succeeds; nothing is skipped on failure, since
        the positions only move with the data."""
        attempt = 0
        while True:
            try:
                await step(*args)
                return
            except PositionsMoved as exc:  # never retried: it would write over the other's
                raise ProjectionLocked(f"another projector wrote the read model ({exc}); "
                                       "this one stops") from exc
            except Exception:
                if self._stopping:
                    log.exception("giving up at shutdown; the next start resumes here")
                    return
                delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
                attempt += 1
                log.exception("projection step failed; retrying in %.1f s", delay)
                await asyncio.sleep(delay)

    def _fold(self, d: Delivery) -> list[Change]:
        n = self.names
        try:
            if d.stream == n.events_stream:
                return [c for e in parse_events(d.data) for c in fold_event(e)]
            if d.stream == n.outcomes_stream:
                return fold_outcome(DownloadOutcome.model_validate_json(d.data))
            return fold_progress(DownloadProgress.model_validate_json(d.data))
        except ValidationError:
            self.stats.unreadable += 1
            metrics.UNREADABLE.inc()
            log.error("skipping unreadable message %s #%d", d.stream, d.seq)
            return []

    async def apply(self, deliveries: Sequence[Delivery]) -> int:
        """Fold deliveries into the read model in one transaction that also moves their
        streams' positions. Returns how many were new (the rest were redeliveries)."""
        assert self._pool is not None, "start() first"
        positions: dict[str, int] = {}
        changes: list[Change] = []
        applied: dict[str, int] = {}
        fresh: list[Delivery] = []
        for d in deliveries:
            if d.seq <= positions.get(d.stream, self.positions.get(d.stream, 0)):
                self.stats.skipped += 1
                metrics.SKIPPED.inc()
                continue
            fresh.append(d)
            positions[d.stream] = d.seq
            applied[d.stream] = applied.get(d.stream, 0) + 1
            changes.extend(self._fold(d))
        if not positions:
            return 0
        async with self._pool.acquire() as conn, conn.transaction():
            written = await apply_changes(conn, changes)
            await save_positions(conn, positions, self.positions)
            touched = written.batches | await open_batches_of_jobs(conn, written.jobs)
        self.stats.transactions += 1
        for stream, n in applied.items():
            self.stats.applied[stream] = self.stats.applied.get(stream, 0) + n
        self._count_applied(fresh, applied)
        await self._advance(positions)
        if self._snapshots:
            self._snapshots.touch(touched)
        return sum(applied.values())

    def _count_applied(self, fresh: Sequence[Delivery], applied: Mapping[str, int]) -> None:
        metrics.TRANSACTIONS.labels("events").inc()
        for stream, n in applied.items():
            metrics.APPLIED.labels(stream).inc(n)
        now = time.time()
        for d in fresh:
            if d.stored:  # (a delivery built by hand has no stored time)
                metrics.APPLY_DELAY.labels(d.stream).observe(max(0.0, now - d.stored))
                self._applied_stored[d.stream] = d.stored

    def _offer_progress(self, d: Delivery) -> None:
        if d.seq <= self.positions.get(d.stream, 0):
            self.stats.skipped += 1
            metrics.SKIPPED.inc()
            return
        self.stats.applied[d.stream] = self.stats.applied.get(d.stream, 0) + 1
        metrics.APPLIED.labels(d.stream).inc()
        self._offered_stored = d.stored
        try:
            self._progress.offer(d.seq, DownloadProgress.model_validate_json(d.data))
        except ValidationError:
            self.stats.unreadable += 1
            metrics.UNREADABLE.inc()
            log.error("skipping unreadable progress #%d", d.seq)
            self._progress.offer(d.seq, None)

    async def flush_progress(self) -> None:
        """Write the newest held progress of every job in one transaction."""
        assert self._pool is not None, "start() first"
        reports, seq = self._progress.take()
        stream = self.names.progress_stream
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                changes = [ApplyProgress(p) for p in sorted(reports, key=lambda p: p.job_id)]
                written = await merge_jobs(conn, changes)
                await save_positions(conn, {stream: seq}, self.positions)
                touched = await open_batches_of_jobs(conn, written)
        except BaseException:
            self._progress.offer(seq, None)  # keep everything for the next attempt
            for p in reports:
                self._progress.offer(seq, p)
            raise
        self.stats.transactions += 1
        self.stats.progress_flushes += 1
        self.stats.progress_rows += len(written)
        metrics.TRANSACTIONS.labels("progress").inc()
        metrics.PROGRESS_ROWS.inc(len(written))
        self._applied_stored[stream] = self._offered_stored
        await self._advance({stream: seq})
        if self._snapshots:
            self._snapshots.touch(touched)
