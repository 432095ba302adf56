"""Run a job: download it with heartbeats, publish progress and exactly one outcome.

The worker holds no state that matters: the job stays unacknowledged in JetStream until
its outcome is handed over (`JobLifecycle.end`), the lease says who waits for it, and the
bytes already fetched are in the .part file. Kill it at any point and another replica
picks up where it was. `app.py` feeds it jobs from FastStream; a job arrives as the
`DownloadJob` body plus its `JobMessage` (the JetStream delivery it answers through).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from tgdl.bus.jobs import JobLifecycle
from tgdl.bus.leases import Rejoined
from tgdl.bus.samefile import FileRecords, copy_size, link_or_copy
from tgdl.contracts.errors import ErrorCode, Failure
from tgdl.contracts.jobs import (
    DownloadJob,
    DownloadOutcome,
    DownloadProgress,
    FileRecord,
    Lease,
    ProgressState,
)
from tgdl.contracts.paths import relative_path
from tgdl.contracts.status import OutcomeStatus
from tgdl.downloader import metrics
from tgdl.downloader.files import (
    PartFile,
    SizeMismatch,
    discard_part,
    free_bytes,
    is_complete,
    kept_bytes,
    part_path,
    store_whole,
)
from tgdl.downloader.flood import FloodGate
from tgdl.downloader.meter import Meter
from tgdl.downloader.parts import PartStats, fetch_checked, fetch_parts, requests_for
from tgdl.downloader.room import Room, wanted
from tgdl.downloader.samefile import Fetch, LinkTo, WaitFor, choose
from tgdl.downloader.settings import DownloaderSettings
from tgdl.downloader.telegram.port import (
    PART_SIZE,
    FloodWait,
    PermanentError,
    RemoteMedia,
    TelegramPort,
    TransientError,
)

log = logging.getLogger("tgdl.downloader")


class Cancelled(Exception):
    """Every party left the lease: nobody wants this file any more."""


class _AccountWaiting(Exception):
    """Another replica of the account is sitting out a flood wait: pause, then resume."""


class Retry(Exception):
    """Give the job back to the queue; it resumes from the .part file later."""

    def __init__(self, delay: float, reason: str) -> None:
        super().__init__(reason)
        self.delay = delay


class JobMessage(Protocol):
    """The JetStream delivery of a job, as the worker answers it (FastStream's
    `NatsMessage` is one)."""

    async def ack(self) -> None: ...
    async def nack(self, delay: float | None = None) -> None: ...
    async def in_progress(self) -> None: ...

    @property
    def raw_message(self): ...  # the nats-py message: its delivery count and sequence


ProgressSink = Callable[[DownloadProgress], Awaitable[None]]
SAME_FILE_POLL = 0.2  # seconds between looks at a file another job is fetching


@dataclass
class Running:
    job: DownloadJob
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: bool = False  # stop because nobody wants it (vs. this replica shutting down)
    keep_part: bool = False  # ...for now: a party paused it and will resume from the .part
    # The lease and its revision as last seen (claim, then the watcher): ending the job
    # writes against it without reading it first.
    seen: tuple[Lease, int] | None = None
    copy: int | None = None  # the job message (stream sequence) this run claimed the lease as
    early: EarlyClaim | None = None  # the file's record, claimed beside the lease
    # Completing the file's record, written beside the job's end (see Worker.handle).
    recording: asyncio.Task | None = None
    # Tells the replica's `Room` how many part requests this job wants now.
    wants: Callable[[int], None] = lambda requests: None

    def fence(self) -> None:
        """Right before the final rename: the lease, as last seen, still names this job
        and this copy of it; otherwise another run owns the file and this one stops."""
        lease = self.seen[0] if self.seen else None
        if lease is None or lease.job_id != self.job.job_id or lease.claimed_by != self.copy:
            raise Retry(0.0, "the lease names another run of this file now: not renaming")


class EarlyClaim:
    """The file's record claimed at the same time as the lease, not after it: one round
    trip less before a file's first byte. The download takes the result; when nothing
    takes it (the lease was another copy's, the job was cancelled while queued), a record
    it created is released again, so no job waits for a download that never runs."""

    def __init__(self, files: FileRecords, key: str, job: DownloadJob) -> None:
        self._files = files
        self._key = key
        self._job_id = job.job_id
        mine = FileRecord(job_id=job.job_id, message_id=job.entry.message_id)
        self._task = asyncio.create_task(files.claim(key, mine, None))
        self._taken = False

    async def take(self) -> int | None:
        """The created record's revision, or None if a record was there already."""
        self._taken = True
        return await self._task

    async def drop(self) -> None:
        if self._taken:
            return
        with contextlib.suppress(Exception):  # a record left behind only delays a sibling
            if await self._task is not None:
                await self._files.release(self._key, self._job_id)


def _allowed(settings: DownloaderSettings, job: DownloadJob) -> bool:
    """The allow-list admits the job's chat by its name or another the job says it has.
    Taken on trust like the rest of the job: whoever may publish jobs may name any chat."""
    return settings.chat_allowed(job.entry.chat, *job.chat_names)


def _now() -> datetime:
    return datetime.now(UTC)


class Worker:
    """Runs up to `settings.slots` jobs at once. `take` starts a job and returns once a
    slot is free for the next one and the connections have room for it (`Room`), so the
    consumer in front of it fetches a job only when it can start it at once: a fetched
    job never waits unheartbeated (JetStream would hand it to another replica meanwhile,
    and both would write the same .part file)."""

    def __init__(
        self,
        settings: DownloaderSettings,
        port: TelegramPort,
        lifecycle: JobLifecycle,
        flood: FloodGate,
        progress: ProgressSink,
        files: FileRecords | None = None,
    ) -> None:
        self.s = settings
        self.port = port
        self.jobs = lifecycle
        self.leases = lifecycle.leases
        self.flood = flood
        self.send_progress = progress
        # Which Telegram files are being fetched or stored where (None: every message
        # downloads its own copy).
        self.files = files
        self.running: dict[int, Running] = {}
        self._slots = asyncio.Semaphore(settings.slots)
        self.room = Room(settings.connections_per_dc * settings.requests_per_connection)
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._watcher = None
        self._follow: asyncio.Task | None = None
        # Every lease as the watcher last saw it (raw, parsed only when a job needs it):
        # a job's first delivery claims against it instead of reading the lease first.
        self._leases_seen: dict[int, tuple[bytes, int]] = {}

    # --- taking jobs --------------------------------------------------------------------------

    async def open(self) -> None:
        """Follow the leases and hold the slot for the first job (before any fetch)."""
        self._watcher = await self.leases.kv.watchall()
        self._follow = asyncio.create_task(self._follow_leases(self._watcher))
        await self._slots.acquire()

    async def take(self, job: DownloadJob, msg: JobMessage) -> None:
        """Start `job` in the slot held for it; return once the next slot is held and the
        connections have room (or the worker is stopping)."""
        if self._stopping.is_set():
            await msg.nack()  # fetched as we stop: straight back to the queue
            return
        s = self.s
        self.room.want(msg, wanted(job.entry.size, s.parts_per_file,
                                   s.requests_per_connection, self.room.capacity))
        task = asyncio.create_task(self._guarded(job, msg))
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._finished(done, msg))
        ready = asyncio.create_task(self._next_ready())
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait({ready, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not ready.done():
                ready.cancel()
                await asyncio.gather(ready, return_exceptions=True)

    async def _next_ready(self) -> None:
        """Hold the next slot, then wait for room on the connections: at most
        `room_patience`, then the next job is taken anyway, so with no replica that has
        room (a single one, all of them busy with large files) a small file waits that
        long, not for a large one to end."""
        await self._slots.acquire()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.room.wait(), self.s.room_patience)
        except asyncio.CancelledError:
            self._slots.release()  # stopping: nobody will use that slot now
            raise

    def _finished(self, task: asyncio.Task, msg: JobMessage) -> None:
        self._tasks.discard(task)
        self.room.drop(msg)
        self._slots.release()

    async def stop(self) -> None:
        """Stop every download (each keeps its .part and goes back to the queue at once)."""
        self._stopping.set()
        for running in self.running.values():
            running.stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._follow is not None:
            self._follow.cancel()
            await asyncio.gather(self._follow, return_exceptions=True)
        with contextlib.suppress(Exception):
            if self._watcher is not None:
                await self._watcher.stop()  # or its heartbeat check outlives the connection

    async def _follow_leases(self, watcher) -> None:
        """Stop a running download as soon as its lease has no party left (or is gone)."""
        async for entry in watcher:
            if entry is None:
                continue
            with contextlib.suppress(ValueError):
                m = int(entry.key)
                gone = not entry.value or entry.operation in ("DEL", "PURGE")
                if gone:
                    self._leases_seen.pop(m, None)
                else:
                    self._leases_seen[m] = (entry.value, entry.revision)
                running = self.running.get(m)
                if running is None:
                    continue
                lease = None if gone else Lease.model_validate_json(entry.value)
                if (
                    lease is None
                    or lease.job_id != running.job.job_id
                    or (not lease.parties and lease.outcome is None)
                ):
                    running.cancelled = True
                    running.keep_part = lease is not None and lease.keep_part
                    running.stop.set()
                elif running.seen is None or entry.revision > running.seen[1]:
                    running.seen = (lease, entry.revision)

    # --- one job ----------------------------------------------------------------------------

    async def _guarded(self, job: DownloadJob, msg: JobMessage) -> None:
        """Whatever goes wrong, the job goes back to the queue: never terminated, since
        the orchestrator hears of a job only through its outcome or its last delivery."""
        try:
            await self.handle(job, msg)
        except Exception:
            log.exception("job %s failed unexpectedly; giving it back", job.job_id)
            with contextlib.suppress(Exception):
                await msg.nack(delay=self.s.retry_base_delay)

    async def handle(self, job: DownloadJob, msg: JobMessage) -> None:
        m = job.entry.message_id
        meta = msg.raw_message.metadata
        running = self.running.get(m)
        if running is not None:
            if running.job.job_id == job.job_id and running.copy != meta.sequence.stream:
                # Another copy of the job running here (re-queued by a race): the running
                # one answers for the job. Unanswered, this copy would be redelivered
                # until JetStream gave up on it, and that fails the job.
                await msg.ack()
            return  # a redelivery of the running copy: that run answers for it
        current = self._seen_lease(m, job.job_id) if meta.num_delivered == 1 else None
        if current is None:
            current = await self.leases.get(m)
        if current is None or current[0].job_id != job.job_id:
            await msg.ack()  # stale: the message is someone else's now, or nobody's
            return
        if current[0].outcome is not None:  # a previous delivery ended it, not handed over
            await self.jobs.hand_over(current[0].outcome)
            await self._done(msg, current[0].outcome)
            return
        early = self._claim_file_early(job)
        try:
            claimed = await self.jobs.claim(m, job.job_id, meta.sequence.stream, current)
            if claimed is None:
                await msg.ack()  # another copy of this job holds the lease: it does the work
                return
            await self._claimed(job, msg, claimed, early)
        finally:
            if early is not None:
                await early.drop()

    def _claim_file_early(self, job: DownloadJob) -> EarlyClaim | None:
        location = job.entry.location
        if self.files is None or location is None or not _allowed(self.s, job):
            return None
        return EarlyClaim(self.files, location.file_key, job)

    async def _claimed(self, job: DownloadJob, msg: JobMessage, claimed: tuple[Lease, int],
                       early: EarlyClaim | None) -> None:
        """Run the job whose lease this copy just claimed."""
        m = job.entry.message_id
        attempt = msg.raw_message.metadata.num_delivered
        lease = claimed[0]
        if not lease.parties:  # cancelled while queued: a cancel leaves no bytes behind
            if not lease.keep_part:
                discard_part(self.s.media_root / relative_path(job.entry, job.name_template))
                await self._end(msg, self._outcome(job, OutcomeStatus.cancelled))
            else:
                await self._end(msg, self._paused(job))
            return

        if lease.force and not job.force:  # a forcing request joined before we started
            job = job.model_copy(update={"force": True})
        running = Running(job, seen=claimed, copy=claimed[0].claimed_by, early=early,
                          wants=functools.partial(self.room.want, msg))
        self.running[m] = running
        metrics.STARTED.inc()
        heartbeat = asyncio.create_task(self._heartbeat(msg))
        try:
            outcome = await self._download(job, running, attempt)
        except Retry as retry:
            metrics.RETRIES.inc()
            log.info("job %s: %s; retrying in %.1f s", job.job_id, retry, retry.delay)
            await msg.nack(delay=retry.delay)
            return
        finally:
            heartbeat.cancel()
            self.running.pop(m, None)
        if running.recording is None:
            await self._end(msg, outcome, running.seen)
        else:  # the record and the outcome are independent writes: one round trip for both
            await asyncio.gather(self._end(msg, outcome, running.seen), running.recording)

    def _seen_lease(self, message_id: int, job_id: str) -> tuple[Lease, int] | None:
        """The job's own lease as the watcher saw it, if it did. Possibly stale, which is
        safe: the claim is a compare-and-set (it reads again when the lease changed), and
        ending as cancelled always reads first."""
        seen = self._leases_seen.get(message_id)
        if seen is None:
            return None
        with contextlib.suppress(ValueError):
            lease = Lease.model_validate_json(seen[0])
            if lease.job_id == job_id and lease.outcome is None:
                return lease, seen[1]
        return None

    async def _heartbeat(self, msg: JobMessage) -> None:
        """Tell JetStream we are alive well inside ack_wait, however long the file takes."""
        interval = max(0.2, min(self.s.ack_wait / 4, 5.0))
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(Exception):
                await msg.in_progress()

    async def _end(self, msg: JobMessage, outcome: DownloadOutcome,
                   seen: tuple[Lease, int] | None = None) -> None:
        try:
            addressed = await self.jobs.end(outcome, seen)
        except Rejoined:  # wanted again while stopping (a quick resume): run it once more
            log.info("job %s was wanted again while stopping; it goes on", outcome.job_id)
            await msg.nack()
            return
        if addressed is None:
            await msg.ack()  # stale: the lease is another job's
            return
        await self._done(msg, addressed)

    async def _done(self, msg: JobMessage, outcome: DownloadOutcome) -> None:
        await msg.ack()  # only now: until here a redelivery finishes the hand-over
        metrics.count_outcome(outcome)
        log.info("job %s %s", outcome.job_id, outcome.status)

    def _outcome(self, job: DownloadJob, status: OutcomeStatus, failure: Failure | None = None,
                 size: int | None = None, hash_verified: bool | None = None,
                 parts_refetched: int = 0, same_file_as: int | None = None,
                 link: str | None = None) -> DownloadOutcome:
        rel = relative_path(job.entry, job.name_template)
        completed = status == OutcomeStatus.completed
        return DownloadOutcome(
            job_id=job.job_id, message_id=job.entry.message_id, status=status,
            file_path=str(self.s.media_root / rel) if completed else None,
            relative_path=str(rel) if completed else None,
            size=size if completed else None,
            failure=failure,
            at=_now(),
            hash_verified=hash_verified if completed else None,
            parts_refetched=parts_refetched if completed else None,
            same_file_as=same_file_as if completed else None,
            link=link if completed else None,
        )

    def _paused(self, job: DownloadJob) -> DownloadOutcome:
        """Stopped for a pause: the outcome says how many bytes wait on disk."""
        kept = kept_bytes(self.s.media_root / relative_path(job.entry, job.name_template),
                          job.entry.size, PART_SIZE)
        return self._outcome(job, OutcomeStatus.cancelled, Failure.of(
            ErrorCode.cancelled, "paused: the .part file is kept for the resume")
        ).model_copy(update={"downloaded_size": kept})

    # --- the download -----------------------------------------------------------------------

    async def _download(self, job: DownloadJob, running: Running, attempt: int) -> DownloadOutcome:
        if not _allowed(self.s, job):  # whoever queued it, never fetched
            return self._outcome(job, OutcomeStatus.failed, Failure.of(
                ErrorCode.access_denied,
                f"chat {job.entry.chat!r} is not among the allowed chats of this downloader"))
        final: Path = self.s.media_root / relative_path(job.entry, job.name_template)
        location = job.entry.location
        if not job.force and is_complete(final, job.entry.size):
            outcome = self._outcome(job, OutcomeStatus.completed, size=job.entry.size)
            if self.files is not None and location is not None:  # so its forwards link to it
                await self._record_complete(location.file_key, job, outcome)
            return outcome
        if self.files is None or location is None:
            return await self._download_file(job, running, attempt, final)
        return await self._once_per_file(job, running, attempt, final, location.file_key)

    # --- one download per Telegram file -----------------------------------------------------

    async def _once_per_file(self, job: DownloadJob, running: Running, attempt: int,
                             final: Path, key: str) -> DownloadOutcome:
        """Link to the file if another message's download of it is complete (waiting for
        one in progress); otherwise download it, holding its record meanwhile."""
        assert self.files is not None
        try:
            found = await self._same_file(job, running, final, key)
        except Cancelled:
            return self._cancelled(job, running, final)
        if isinstance(found, DownloadOutcome):
            return found
        holding = asyncio.create_task(self._hold(key, *found))
        outcome: DownloadOutcome | None = None
        try:
            outcome = await self._download_file(job, running, attempt, final)
            return outcome
        finally:
            holding.cancel()
            await asyncio.gather(holding, return_exceptions=True)
            if outcome is not None and outcome.status == OutcomeStatus.completed:
                running.recording = asyncio.create_task(self._record_complete(
                    key, job, outcome))
            else:
                with contextlib.suppress(Exception):  # a lost record only delays a sibling
                    await self.files.release(key, job.job_id)

    async def _record_complete(self, key: str, job: DownloadJob,
                               outcome: DownloadOutcome) -> None:
        assert self.files is not None
        with contextlib.suppress(Exception):  # a lost record only costs a re-download
            await self.files.complete(key, FileRecord(
                job_id=job.job_id, message_id=job.entry.message_id,
                relative_path=outcome.relative_path, size=outcome.size))

    async def _same_file(self, job: DownloadJob, running: Running, final: Path, key: str
                         ) -> DownloadOutcome | tuple[FileRecord, int]:
        """The outcome of linking to a finished copy, or the record this job now holds
        (it downloads the file). Raises Cancelled or Retry if stopped while waiting."""
        assert self.files is not None
        own = str(relative_path(job.entry, job.name_template))
        mine = FileRecord(job_id=job.job_id, message_id=job.entry.message_id)
        # Most files are nobody else's: the record taken beside the lease, else look.
        created = await (running.early.take() if running.early is not None
                         else self.files.claim(key, mine, None))
        if created is not None:
            return mine, created
        seen: int | None = None
        since = time.monotonic()
        waited_for: str | None = None
        while True:
            current = await self.files.get(key)
            record, revision = current if current else (None, None)
            if revision != seen:
                seen, since = revision, time.monotonic()
            source_size = None
            if record is not None and record.relative_path is not None:
                source_size = copy_size(self.s.media_root, record.relative_path)
            gone = time.monotonic() - since > self._holder_timeout
            match choose(job, own, record, source_size, gone, waited_for):
                case LinkTo(relative_path=source, message_id=other):
                    try:
                        how = await asyncio.to_thread(
                            link_or_copy, self.s.media_root / source, final)
                    except FileNotFoundError:
                        continue  # removed just now: the record is stale, look again
                    except OSError as exc:  # e.g. a full disk while copying
                        return self._outcome(job, OutcomeStatus.failed, Failure.of(
                            ErrorCode.storage, f"could not link or copy the same file "
                            f"(message {other}'s) to this message's path: {exc}"))
                    log.info("message %d: the same file as message %d (%s)",
                             job.entry.message_id, other, how)
                    return self._outcome(job, OutcomeStatus.completed, size=source_size,
                                         same_file_as=other, link=how)
                case Fetch():
                    claimed = await self.files.claim(key, mine, revision)
                    if claimed is not None:
                        return mine, claimed
                case WaitFor(job_id=holder):
                    waited_for = holder
                    running.wants(0)  # another job fetches it: leave the connections to others
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(running.stop.wait(), timeout=SAME_FILE_POLL)
                    if running.stop.is_set():
                        raise Cancelled() if running.cancelled else Retry(0, "shutting down")

    @property
    def _holder_timeout(self) -> float:
        """A record of a download in progress not refreshed for this long is taken over:
        its downloader died (a live one refreshes it every ack_wait)."""
        return 3 * self.s.ack_wait

    async def _hold(self, key: str, record: FileRecord, revision: int) -> None:
        """Refresh this job's record while it downloads, so waiting jobs know it lives."""
        assert self.files is not None
        while True:
            await asyncio.sleep(self.s.ack_wait)
            with contextlib.suppress(Exception):
                refreshed = await self.files.claim(key, record, revision)
                if refreshed is None:
                    return  # taken over: the other job fetches it too, nothing breaks
                revision = refreshed

    def _cancelled(self, job: DownloadJob, running: Running, final: Path) -> DownloadOutcome:
        if running.keep_part:
            return self._paused(job)
        discard_part(final)
        return self._outcome(job, OutcomeStatus.cancelled, Failure.of(
            ErrorCode.cancelled, "every request for this file was cancelled"))

    # --- fetching the bytes -----------------------------------------------------------------

    async def _download_file(self, job: DownloadJob, running: Running, attempt: int,
                             final: Path) -> DownloadOutcome:
        if (short := self._short_of_space(final, job.entry.size)) is not None:
            return self._outcome(job, OutcomeStatus.failed, short)
        progress = _ProgressPublisher(self, job, attempt)
        try:
            while True:
                try:
                    await self._wait_out_flood(running, progress)
                    media = await self._interruptible(running, self.port.resolve(job.entry))
                    size, verified, refetched = await self._fetch(
                        media, final, running, progress)
                    return self._outcome(job, OutcomeStatus.completed, size=size,
                                         hash_verified=verified, parts_refetched=refetched)
                except FloodWait as wait:
                    metrics.FLOOD_WAITS.inc()
                    metrics.FLOOD_WAIT_SECONDS.inc(wait.seconds)
                    if wait.seconds > self.s.max_flood_wait:
                        return self._outcome(job, OutcomeStatus.failed, Failure.of(
                            ErrorCode.flood_wait_too_long,
                            f"Telegram asked to wait {wait.seconds} s (limit "
                            f"{self.s.max_flood_wait} s)"))
                    await self.flood.hold(wait.seconds)  # every replica of the account waits
                except _AccountWaiting:
                    pass  # sit out the deadline already shared; do not extend it
        except Cancelled:
            return self._cancelled(job, running, final)
        except PermanentError as exc:
            discard_part(final)
            return self._outcome(job, OutcomeStatus.failed, exc.failure)
        except (TransientError, SizeMismatch, OSError) as exc:
            if isinstance(exc, SizeMismatch) and exc.actual > exc.expected:
                discard_part(final)  # more bytes than announced: start clean next time
            if attempt >= self.s.max_deliver:
                code = ErrorCode.storage if isinstance(exc, OSError) else (
                    ErrorCode.size_mismatch if isinstance(exc, SizeMismatch)
                    else ErrorCode.retries_exhausted)
                return self._outcome(job, OutcomeStatus.failed, Failure.of(
                    code, f"gave up after {attempt} attempts; last error: {exc}"))
            delay = self.s.retry_delay(attempt)
            await progress.publish("retrying", force=True)
            raise Retry(delay, str(exc)) from exc
        finally:
            progress.close()

    def _short_of_space(self, final: Path, size: int | None) -> Failure | None:
        """Room for the rest of the file plus the reserve, or why not (with the numbers)."""
        try:
            on_disk = part_path(final).stat().st_size
        except FileNotFoundError:
            on_disk = 0
        needed = max(0, (size or 0) - on_disk) + self.s.min_free_bytes
        free = free_bytes(final.parent)
        if free >= needed:
            return None
        return Failure.of(ErrorCode.storage, (
            f"{free} bytes free on the media folder's disk; this file needs "
            f"{max(0, (size or 0) - on_disk)} more plus the reserve of "
            f"{self.s.min_free_bytes} (TGDL_MIN_FREE_BYTES)"))

    async def _fetch(
        self, media: RemoteMedia, final: Path, running: Running, progress: _ProgressPublisher
    ) -> tuple[int, bool, int]:
        """Fetch the parts the .part file is missing, several at once, then commit it;
        returns the size, whether every part matched Telegram's hashes, and how many
        parts had to be fetched again because they did not."""
        if 0 < media.size <= PART_SIZE:
            return await self._fetch_whole(media, final, running)
        file = PartFile(final, media.size, PART_SIZE)
        await asyncio.to_thread(file.open)
        try:
            progress.start(media.size, file.bytes_done())
            # A file that comes in one part (most photos, voice notes, stickers) is done
            # as soon as it started: its outcome says all, progress would only cost.
            quiet = media.size - file.bytes_done() <= PART_SIZE
            if not quiet:
                await progress.publish("downloading", force=True)

            async def stored(nbytes: int) -> None:
                metrics.BYTES.inc(nbytes)
                progress.add(nbytes)
                if not quiet:
                    await progress.publish("downloading")
                if self.flood.remaining() > 0:  # another replica hit a flood wait
                    raise _AccountWaiting()

            width = requests_for(media.size, self.s.parts_per_file,
                                 self.s.requests_per_connection)
            stats = PartStats()

            async def fetch() -> None:
                async with self.port.parts(media) as source:
                    await fetch_parts(source, file, width, stored, stats, running.wants)

            try:
                await self._interruptible(running, fetch())
            finally:
                running.wants(0)
                if stats.refetched:
                    log.warning("message %d: %d part(s) fetched again after failing "
                                "Telegram's hashes", media.entry.message_id, stats.refetched)
            verified = file.all_verified()
            running.fence()
            await asyncio.to_thread(file.commit)
        finally:
            file.close()
        if not quiet:
            progress.add(0)
            await progress.publish("downloading", force=True)
        return media.size, verified, stats.refetched

    async def _fetch_whole(self, media: RemoteMedia, final: Path, running: Running
                           ) -> tuple[int, bool, int]:
        """A file of one part (most photos, voice notes, stickers): one request, one
        write with its fsyncs, and no progress (its outcome says all)."""
        stats = PartStats()

        async def fetch() -> tuple[bytes, bool]:
            async with self.port.parts(media) as source:
                return await fetch_checked(source, 0, media.size, stats)

        try:
            data, verified = await self._interruptible(running, fetch())
        finally:
            running.wants(0)
            if stats.refetched:
                log.warning("message %d fetched again after failing Telegram's hashes",
                            media.entry.message_id)
        running.fence()
        await asyncio.to_thread(store_whole, final, data)
        metrics.BYTES.inc(len(data))
        return media.size, verified, stats.refetched

    async def _interruptible(self, running: Running, work: Awaitable):
        """Run `work` until it ends or the download must stop (cancel or shutdown)."""
        task = asyncio.ensure_future(work)
        stopper = asyncio.create_task(running.stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            if running.cancelled:
                raise Cancelled()
            raise Retry(0, "this downloader is shutting down")
        return task.result()

    async def _wait_out_flood(self, running: Running, progress: _ProgressPublisher) -> None:
        with metrics.WAITING.track_inprogress():
            while (left := self.flood.remaining()) > 0:
                await progress.publish("waiting", wait_seconds=int(left) + 1, force=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(running.stop.wait(), timeout=min(left, 1.0))
                if running.stop.is_set():
                    raise Cancelled() if running.cancelled else Retry(0, "shutting down")
        progress.resume()


class _ProgressPublisher:
    """A few progress messages per second, never more (the projector throttles further)."""

    def __init__(self, worker: Worker, job: DownloadJob, attempt: int) -> None:
        self.w = worker
        self.job = job
        self.attempt = attempt
        self.meter: Meter | None = None
        self._last = 0.0
        self._clock: Callable[[], float] = time.monotonic

    def start(self, total: int, offset: int) -> None:
        self.meter = Meter(total, offset, self._clock())

    def add(self, nbytes: int) -> None:
        if self.meter:
            self.meter.add(nbytes, self._clock())

    def resume(self) -> None:
        if self.meter:
            self.meter.restart(self._clock())

    async def publish(self, state: ProgressState, wait_seconds: int | None = None,
                      force: bool = False) -> None:
        now = self._clock()
        if not force and now - self._last < self.w.s.progress_interval:
            return
        self._last = now
        meter = self.meter
        total = meter.total if meter else (self.job.entry.size or 0)
        body = DownloadProgress(
            job_id=self.job.job_id, message_id=self.job.entry.message_id, state=state,
            downloaded_size=meter.done if meter else 0, total_size=total,
            download_speed=meter.speed if meter and state == "downloading" else 0,
            estimated_time_remaining=meter.eta if meter and state == "downloading" else None,
            wait_seconds=wait_seconds, attempt=self.attempt, at=_now(),
        )
        with contextlib.suppress(Exception):  # progress is best effort; outcomes are not
            await self.w.send_progress(body)

    def close(self) -> None:
        self.meter = None
