"""Pull a job, download it with heartbeats, publish progress and exactly one outcome.

The worker holds no state that matters: the job stays unacknowledged in JetStream until
its outcome is published, the lease says who waits for it, and the bytes already fetched
are in the .part file. Kill it at any point and another replica picks up where it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic import ValidationError

from tgdl.bus.leases import Leases
from tgdl.contracts.errors import ErrorCode, Failure
from tgdl.contracts.jobs import (
    DownloadJob,
    DownloadOutcome,
    DownloadProgress,
    Lease,
    ProgressState,
)
from tgdl.contracts.paths import relative_path
from tgdl.contracts.subjects import Names
from tgdl.downloader.files import (
    PartWriter,
    SizeMismatch,
    discard_part,
    is_complete,
    part_path,
    resume_offset,
)
from tgdl.downloader.flood import FloodGate
from tgdl.downloader.meter import Meter
from tgdl.downloader.settings import DownloaderSettings
from tgdl.downloader.telegram.port import (
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


@dataclass
class Running:
    job: DownloadJob
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: bool = False  # stop because nobody wants it (vs. this replica shutting down)


def _now() -> datetime:
    return datetime.now(UTC)


class Worker:
    def __init__(
        self,
        settings: DownloaderSettings,
        port: TelegramPort,
        nc: NATS,
        js: JetStreamContext,
        leases: Leases,
        flood: FloodGate,
    ) -> None:
        self.s = settings
        self.names: Names = settings.names
        self.port = port
        self.nc = nc
        self.js = js
        self.leases = leases
        self.flood = flood
        self.running: dict[int, Running] = {}

    # --- the loop ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        watcher = await self.leases.kv.watchall()
        follow = asyncio.create_task(self._follow_leases(watcher))
        sub = await self.js.pull_subscribe_bind(
            self.names.downloader_consumer, stream=self.names.jobs_stream
        )
        slots = asyncio.Semaphore(self.s.slots)
        tasks: set[asyncio.Task] = set()
        try:
            while not stop.is_set():
                await slots.acquire()
                try:
                    msgs = await sub.fetch(batch=1, timeout=1.0)
                except TimeoutError:
                    slots.release()
                    continue
                for msg in msgs:
                    task = asyncio.create_task(self.handle(msg))
                    tasks.add(task)
                    task.add_done_callback(lambda t: (tasks.discard(t), slots.release()))
        finally:
            # Shutting down: stop every download, keep its .part, hand the job back now.
            for running in self.running.values():
                running.stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            follow.cancel()
            await asyncio.gather(follow, return_exceptions=True)
            with contextlib.suppress(Exception):
                await watcher.stop()  # or its heartbeat check outlives the connection
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _follow_leases(self, watcher) -> None:
        """Stop a running download as soon as its lease has no party left (or is gone)."""
        async for entry in watcher:
            if entry is None:
                continue
            with contextlib.suppress(ValueError):
                running = self.running.get(int(entry.key))
                if running is None:
                    continue
                gone = not entry.value or entry.operation in ("DEL", "PURGE")
                lease = None if gone else Lease.model_validate_json(entry.value)
                if (
                    lease is None
                    or lease.job_id != running.job.job_id
                    or (not lease.parties and lease.outcome is None)
                ):
                    running.cancelled = True
                    running.stop.set()

    # --- one job ----------------------------------------------------------------------------

    async def handle(self, msg: Msg) -> None:
        try:
            job = DownloadJob.model_validate_json(msg.data)
        except ValidationError:
            log.error("terminating malformed job %r", msg.data[:200])
            await msg.term()
            return
        m = job.entry.message_id
        attempt = msg.metadata.num_delivered
        current = await self.leases.get(m)
        if current is None or current[0].job_id != job.job_id:
            await msg.ack()  # stale: the message is someone else's now, or nobody's
            return
        lease = current[0]
        if lease.outcome is not None:  # a previous delivery ended it but did not hand over
            await self._hand_over(msg, lease.outcome)
            return
        if not await self.leases.claim(m, job.job_id, msg.metadata.sequence.stream):
            await msg.ack()  # another copy of this job holds the lease: it does the work
            return
        if not lease.parties:
            await self._end(msg, self._outcome(job, "cancelled"))
            return

        if lease.force and not job.force:  # a forcing request joined before we started
            job = job.model_copy(update={"force": True})
        running = Running(job)
        self.running[m] = running
        heartbeat = asyncio.create_task(self._heartbeat(msg))
        try:
            outcome = await self._download(job, running, attempt)
        except Retry as retry:
            log.info("job %s: %s; retrying in %.1f s", job.job_id, retry, retry.delay)
            await msg.nak(delay=retry.delay)
            return
        finally:
            heartbeat.cancel()
            self.running.pop(m, None)
        await self._end(msg, outcome)

    async def _heartbeat(self, msg: Msg) -> None:
        """Tell JetStream we are alive well inside ack_wait, however long the file takes."""
        interval = max(0.2, min(self.s.ack_wait / 3, 5.0))
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(Exception):
                await msg.in_progress()

    async def _end(self, msg: Msg, outcome: DownloadOutcome) -> None:
        addressed = await self.leases.end(outcome)
        if addressed is None:
            await msg.ack()
            return
        await self._hand_over(msg, addressed)

    async def _hand_over(self, msg: Msg, outcome: DownloadOutcome) -> None:
        await self.js.publish(
            self.names.file_done(outcome.message_id), outcome.model_dump_json().encode(),
            stream=self.names.outcomes_stream,
            headers={"Nats-Msg-Id": f"{outcome.job_id}:done"},
        )
        await self.leases.release(outcome.message_id, outcome.job_id)
        await msg.ack()
        log.info("job %s %s", outcome.job_id, outcome.status)

    def _outcome(self, job: DownloadJob, status: str, failure: Failure | None = None,
                 size: int | None = None) -> DownloadOutcome:
        rel = relative_path(job.entry)
        completed = status == "completed"
        return DownloadOutcome(
            job_id=job.job_id, message_id=job.entry.message_id, status=status,
            file_path=str(self.s.media_root / rel) if completed else None,
            relative_path=str(rel) if completed else None,
            size=size if completed else None,
            error=failure.error if failure else None,
            detail=failure.detail if failure else None,
            suggestion=failure.suggestion if failure else None,
            at=_now(),
        )

    # --- the download -----------------------------------------------------------------------

    async def _download(self, job: DownloadJob, running: Running, attempt: int) -> DownloadOutcome:
        final: Path = self.s.media_root / relative_path(job.entry)
        if not job.force and is_complete(final, job.entry.size):
            return self._outcome(job, "completed", size=job.entry.size)
        progress = _ProgressPublisher(self, job, attempt)
        try:
            while True:
                try:
                    await self._wait_out_flood(running, progress)
                    media = await self._interruptible(running, self.port.resolve(job.entry))
                    size = await self._fetch(media, final, running, progress)
                    return self._outcome(job, "completed", size=size)
                except FloodWait as wait:
                    if wait.seconds > self.s.max_flood_wait:
                        return self._outcome(job, "failed", Failure.of(
                            ErrorCode.flood_wait_too_long,
                            f"Telegram asked to wait {wait.seconds} s (limit "
                            f"{self.s.max_flood_wait} s)"))
                    await self.flood.hold(wait.seconds)  # every replica of the account waits
                except _AccountWaiting:
                    pass  # sit out the deadline already shared; do not extend it
        except Cancelled:
            discard_part(final)
            return self._outcome(job, "cancelled", Failure.of(
                ErrorCode.cancelled, "every request for this file was cancelled"))
        except PermanentError as exc:
            discard_part(final)
            return self._outcome(job, "failed", exc.failure)
        except (TransientError, SizeMismatch, OSError) as exc:
            if isinstance(exc, SizeMismatch) and exc.actual > exc.expected:
                discard_part(final)  # more bytes than announced: start clean next time
            if attempt >= self.s.max_deliver:
                code = ErrorCode.storage if isinstance(exc, OSError) else (
                    ErrorCode.size_mismatch if isinstance(exc, SizeMismatch)
                    else ErrorCode.retries_exhausted)
                return self._outcome(job, "failed", Failure.of(
                    code, f"gave up after {attempt} attempts; last error: {exc}"))
            delay = min(self.s.retry_base_delay * 2 ** (attempt - 1), self.s.retry_max_delay)
            await progress.publish("retrying", force=True)
            raise Retry(delay, str(exc)) from exc
        finally:
            progress.close()

    async def _fetch(
        self, media: RemoteMedia, final: Path, running: Running, progress: _ProgressPublisher
    ) -> int:
        offset = _aligned_resume(final, self.port.request_size, media.size)
        writer = PartWriter(final, offset)
        progress.start(media.size, offset)
        await progress.publish("downloading", force=True)
        try:
            async def copy() -> None:
                async with contextlib.aclosing(self.port.stream(media, offset)) as chunks:
                    async for chunk in chunks:
                        writer.write(chunk)
                        progress.add(len(chunk))
                        await progress.publish("downloading")
                        if self.flood.remaining() > 0:  # another replica hit a flood wait
                            raise _AccountWaiting()

            await self._interruptible(running, copy())
            await asyncio.to_thread(writer.commit, media.size)
        finally:
            writer.close()
        progress.add(0)
        await progress.publish("downloading", force=True)
        return media.size

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
        while (left := self.flood.remaining()) > 0:
            await progress.publish("waiting", wait_seconds=int(left) + 1, force=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(running.stop.wait(), timeout=min(left, 1.0))
            if running.stop.is_set():
                raise Cancelled() if running.cancelled else Retry(0, "shutting down")
        progress.resume()


def _aligned_resume(final: Path, request_size: int, size: int) -> int:
    offset = resume_offset(part_path(final), request_size)
    return offset if offset <= size else 0


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
            await self.w.nc.publish(
                self.w.names.file_progress(self.job.entry.message_id),
                body.model_dump_json().encode(),
            )

    def close(self) -> None:
        self.meter = None
