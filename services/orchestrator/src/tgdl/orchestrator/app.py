"""Orchestrator process wiring: NATS subscriptions in, handlers out. Nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from nats.aio.msg import Msg
from nats.js.errors import NotFoundError
from pydantic import BaseModel, ValidationError

from tgdl.bus.eventlog import EventLog
from tgdl.bus.leases import Leases
from tgdl.bus.topology import QueuePolicy, connect, ensure_topology
from tgdl.contracts.commands import (
    CancelBatch,
    CancelSingle,
    CommandReply,
    Rejection,
    StartBatch,
)
from tgdl.contracts.errors import ErrorCode, Failure
from tgdl.contracts.jobs import DownloadJob, DownloadOutcome
from tgdl.db.connection import create_pool
from tgdl.db.schema import migrate_database
from tgdl.orchestrator.handlers import Orchestrator, Rejected
from tgdl.orchestrator.open_index import OpenBatches
from tgdl.orchestrator.repository import BatchRepository
from tgdl.orchestrator.settings import OrchestratorSettings

log = logging.getLogger("tgdl.orchestrator")

Handler = Callable[[BaseModel], Awaitable[BaseModel]]


def command_handlers(orch: Orchestrator) -> dict[str, tuple[type[BaseModel], Handler]]:
    names = orch.names
    return {
        names.cmd_batch_start: (StartBatch, orch.start_batch),
        names.cmd_batch_cancel: (CancelBatch, orch.cancel_batch),
        names.cmd_single_cancel: (CancelSingle, orch.cancel_single),
    }


async def answer(msg: Msg, model: type[BaseModel], handler: Handler) -> None:
    try:
        reply = CommandReply(ok=await handler(model.model_validate_json(msg.data)))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        reply = CommandReply(rejected=Rejection(status=422, error="invalid_command",
                                                detail=problems))
    except Rejected as exc:
        reply = CommandReply(rejected=exc.rejection)
    except Exception:
        log.exception("command on %s failed", msg.subject)
        reply = CommandReply(rejected=Rejection(
            status=500, error="internal_error", detail="the orchestrator failed to handle it",
            suggestion="retry; if it persists, check the orchestrator logs",
        ))
    if msg.reply:
        await msg.respond(reply.model_dump_json(exclude_none=True).encode())


class OrchestratorService:
    def __init__(self, settings: OrchestratorSettings) -> None:
        self.settings = settings
        self.names = settings.names
        self._tasks: set[asyncio.Task] = set()

    def _spawn(self, coro: Awaitable) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        await migrate_database(s.database_url, s.db_schema)
        nc = await connect(s.nats_url, s.replica)
        js = nc.jetstream()
        await ensure_topology(js, self.names, QueuePolicy.of(s))
        pool = await create_pool(s.database_url, s.db_schema)
        event_log = EventLog(js, self.names)
        orch = Orchestrator(s, js, BatchRepository(event_log), await Leases.open(js, self.names),
                            pool, await OpenBatches.open(js, self.names))
        self.orch = orch
        log.info("recovered %d open batches", await orch.recover())

        for subject, (model, handler) in command_handlers(orch).items():
            async def on_command(msg: Msg, model=model, handler=handler) -> None:
                self._spawn(answer(msg, model, handler))
            await nc.subscribe(subject, queue="orchestrator", cb=on_command)

        names = self.names
        loops = [
            asyncio.create_task(self._consume(
                js, names.outcomes_stream, names.orchestrator_outcomes_consumer,
                lambda msg: self._apply_outcome(orch, msg), stop)),
            asyncio.create_task(self._consume(
                js, names.advisories_stream, names.orchestrator_advisories_consumer,
                lambda msg: self._job_gave_up(js, orch, msg), stop)),
            asyncio.create_task(self._sweep(orch, stop)),
        ]
        try:
            await stop.wait()
        finally:
            for loop in loops:
                loop.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await nc.drain()
            await pool.close()

    async def _sweep(self, orch: Orchestrator, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.sweep_interval)
            try:
                await orch.sweep()
            except Exception:
                log.exception("sweep failed; will try again")

    @staticmethod
    async def _consume(js, stream: str, durable: str,
                       handle: Callable[[Msg], Awaitable[None]], stop: asyncio.Event) -> None:
        """Pull from a durable consumer; `handle` acks, naks or terminates each message."""
        sub = await js.pull_subscribe_bind(durable, stream=stream)
        try:
            while not stop.is_set():
                try:
                    msgs = await sub.fetch(batch=32, timeout=1.0)
                except TimeoutError:
                    continue
                for msg in msgs:
                    await handle(msg)
        finally:
            # unsubscribe rather than drain: an abandoned pull leaves nothing worth waiting for
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    @staticmethod
    async def _apply_outcome(orch: Orchestrator, msg: Msg) -> None:
        try:
            await orch.on_outcome(DownloadOutcome.model_validate_json(msg.data))
        except ValidationError:
            log.error("dropping malformed outcome on %s", msg.subject)
            await msg.term()
            return
        except Exception:
            log.exception("outcome on %s failed; will retry", msg.subject)
            await msg.nak(delay=1.0)
            return
        await msg.ack()

    async def _job_gave_up(self, js, orch: Orchestrator, msg: Msg) -> None:
        """JetStream stopped redelivering a job (its downloaders kept dying): fail it."""
        try:
            seq = int(json.loads(msg.data)["stream_seq"])
            raw = await js.get_msg(self.names.jobs_stream, seq)
            job = DownloadJob.model_validate_json(raw.data)
        except (KeyError, ValueError, NotFoundError):  # malformed, or the job is gone
            await msg.ack()
            return
        try:
            await self._fail_job(js, orch, job)
            with contextlib.suppress(NotFoundError):
                await js.delete_msg(self.names.jobs_stream, seq)
        except Exception:
            log.exception("failing job %s after its last delivery; will retry", job.job_id)
            await msg.nak(delay=1.0)
            return
        await msg.ack()

    async def _fail_job(self, js, orch: Orchestrator, job: DownloadJob) -> None:
        m = job.entry.message_id
        failure = Failure.of(
            ErrorCode.worker_lost,
            f"the downloader stopped {self.settings.max_deliver} times while on this file",
        )
        outcome = await orch.leases.end(DownloadOutcome(
            job_id=job.job_id, message_id=m, status="failed", error=failure.error,
            detail=failure.detail, suggestion=failure.suggestion, at=datetime.now(UTC),
        ))
        if outcome is not None:
            await js.publish(self.names.file_done(m), outcome.model_dump_json().encode(),
                             stream=self.names.outcomes_stream,
                             headers={"Nats-Msg-Id": f"{job.job_id}:done"})
            await orch.leases.release(m, job.job_id)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = OrchestratorSettings()

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await OrchestratorService(settings).run(stop)

    asyncio.run(run())
