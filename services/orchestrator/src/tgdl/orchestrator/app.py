"""Orchestrator process wiring on FastStream: what it subscribes to, what it publishes,
how it starts and stops. Nothing else.

The command subscribers are request/reply on core NATS (queue group "orchestrator"); the
outcome and advisory consumers are durables `tgdl migrate` declares, bound here with
manual acks: a handler that fails naks the message for a retry, only a body that can
never be read is terminated (FastStream's default policy would terminate on any error).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Annotated

from faststream import AckPolicy
from faststream.middlewares import ExceptionMiddleware
from faststream.nats import JStream, NatsBroker, NatsRouter, PullSub
from pydantic import BaseModel, ValidationError

from tgdl.bus.admission import Admission, admit_forever
from tgdl.bus.broker import LoopContext, nats_broker
from tgdl.bus.broker import Message as NatsMessage
from tgdl.bus.eventlog import EventLog, LogFull
from tgdl.bus.jobs import BrokerPublisher, JobLifecycle
from tgdl.bus.leases import Leases
from tgdl.bus.samefile import FileRecords
from tgdl.bus.topology import verify_topology
from tgdl.contracts.commands import (
    BatchAccepted,
    BatchCancelOutcome,
    CancelBatch,
    CancelSingle,
    CommandReply,
    PauseBatch,
    Rejection,
    RejectReason,
    ResumeBatch,
    SetConcurrency,
    SetPriority,
    SingleCancelOutcome,
    StartBatch,
)
from tgdl.contracts.events import BatchEvent
from tgdl.contracts.jobs import DownloadJob, DownloadOutcome
from tgdl.db.connection import create_pool
from tgdl.db.schema import verify_schema
from tgdl.orchestrator import metrics
from tgdl.orchestrator.adapters import JobStream, PgCatalog, SystemClock
from tgdl.orchestrator.handlers import Orchestrator
from tgdl.orchestrator.open_index import OpenBatches
from tgdl.orchestrator.ports import Ports
from tgdl.orchestrator.settings import OrchestratorSettings
from tgdl.runtime import load_settings, run_service, until_reachable

log = logging.getLogger("tgdl.orchestrator")

ORCHESTRATOR = "orchestrator"  # the broker context key of the running `Orchestrator`
Orch = Annotated[Orchestrator, LoopContext(ORCHESTRATOR)]
ADMISSION = "admission"
Admit = Annotated[Admission, LoopContext(ADMISSION)]
ADMIT_INTERVAL = 0.2  # seconds: the admission's tick (see tgdl.bus.admission)
COMMAND_WORKERS = 16  # commands answered at once (each waits on NATS and PostgreSQL)


class MaxDeliveriesAdvisory(BaseModel):
    """JetStream's advisory that a job used up its deliveries (the fields we read)."""

    stream_seq: int


# --- replies ---------------------------------------------------------------------------------


def reply(result: BatchAccepted | BatchCancelOutcome | SingleCancelOutcome | Rejection
          ) -> CommandReply:
    if isinstance(result, Rejection):
        return CommandReply(rejected=result)
    return CommandReply(ok=result)


def _invalid_command(exc: ValidationError) -> CommandReply:
    problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
                         for e in exc.errors())
    return CommandReply(rejected=Rejection(reason=RejectReason.invalid_command,
                                           detail=problems or "not a valid command"))


async def _answer(subject: str, handle) -> CommandReply:
    try:
        return reply(await handle())
    except LogFull as exc:  # a foreseeable outage: say so, no traceback
        log.warning("command on %s refused: the batch log stream is full", subject)
        return CommandReply(rejected=Rejection(
            reason=RejectReason.storage_full, detail=f"the batch log stream is full ({exc})"))
    except Exception:
        log.exception("command on %s failed", subject)
        return CommandReply(rejected=Rejection(
            reason=RejectReason.internal, detail="the orchestrator failed to handle it"))


async def _unreadable(exc: ValidationError, msg: NatsMessage) -> None:
    """A stored body no release can read: retrying would never help."""
    log.error("terminating an unreadable message on %s: %s", msg.raw_message.subject, exc)
    await msg.reject()


async def _ack_after(msg: NatsMessage, handle, what: str, heartbeat: float) -> None:
    """Ack after `handle` succeeded; nak with a delay (retried) if it raised. The
    consumer's ack wait is short, so an orchestrator that dies holding a message hands it
    on within seconds: a slow handling heartbeats meanwhile, and one cut short by a
    shutdown naks it for the next orchestrator at once."""

    async def beat() -> None:
        while True:
            await asyncio.sleep(heartbeat)
            with contextlib.suppress(Exception):
                await msg.in_progress()

    beating = asyncio.create_task(beat())
    try:
        await handle()
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await asyncio.shield(msg.nack())
        raise
    except Exception:
        log.exception("%s failed; will retry", what)
        await msg.nack(delay=1.0)
        return
    finally:
        beating.cancel()
    await msg.ack()


# --- the broker ------------------------------------------------------------------------------


def create_broker(settings: OrchestratorSettings) -> NatsBroker:
    """Every subscriber and publisher of the orchestrator; connects only when started
    (so the AsyncAPI document can be generated from it without NATS)."""
    names = settings.names
    # per-message logs at DEBUG: at INFO they would cost CPU on every outcome and command
    broker = nats_broker(settings.nats_url, settings.replica, log_level=logging.DEBUG)

    commands = NatsRouter(middlewares=[ExceptionMiddleware(publish_handlers={
        ValidationError: _invalid_command})])

    def command(subject: str, title: str, description: str):
        return commands.subscriber(subject, queue="orchestrator", max_workers=COMMAND_WORKERS,
                                   title=title, description=f"{description}; replies a "
                                   "CommandReply (the result or a Rejection).")

    @command(names.cmd_batch_start, "StartBatch", "Start a batch of downloads")
    async def start_batch(cmd: StartBatch, orch: Orch) -> CommandReply:
        return await _answer(names.cmd_batch_start, lambda: orch.start_batch(cmd))

    @command(names.cmd_batch_cancel, "CancelBatch", "Cancel a batch")
    async def cancel_batch(cmd: CancelBatch, orch: Orch) -> CommandReply:
        return await _answer(names.cmd_batch_cancel, lambda: orch.cancel_batch(cmd))

    @command(names.cmd_single_cancel, "CancelSingle",
             "Cancel the single-file requests of a message")
    async def cancel_single(cmd: CancelSingle, orch: Orch) -> CommandReply:
        return await _answer(names.cmd_single_cancel, lambda: orch.cancel_single(cmd))

    @command(names.cmd_batch_pause, "PauseBatch",
             "Pause a batch: no new permits, running files stop and keep their .part")
    async def pause_batch(cmd: PauseBatch, orch: Orch) -> CommandReply:
        return await _answer(names.cmd_batch_pause, lambda: orch.pause_batch(cmd))

    @command(names.cmd_batch_resume, "ResumeBatch",
             "Resume a paused batch: permits again, files continue from their bytes on disk")
    async def resume_batch(cmd: ResumeBatch, orch: Orch) -> CommandReply:
        return await _answer(names.cmd_batch_resume, lambda: orch.resume_batch(cmd))

    @command(names.cmd_batch_concurrency, "SetConcurrency",
             "Change max_concurrent of a running batch (running files are not interrupted)")
    async def set_concurrency(cmd: SetConcurrency, orch: Orch) -> CommandReply:
        return await _answer(names.cmd_batch_concurrency, lambda: orch.set_concurrency(cmd))

    @command(names.cmd_batch_priority, "SetPriority",
             "Change a batch's priority (high, normal, low): its jobs not yet started "
             "move with it under the global cap")
    async def set_priority(cmd: SetPriority, orch: Orch) -> CommandReply:
        return await _answer(names.cmd_batch_priority, lambda: orch.set_priority(cmd))

    streams = NatsRouter(middlewares=[ExceptionMiddleware(handlers={
        ValidationError: _unreadable})])
    heartbeat = max(0.2, settings.outcome_ack_wait / 4)  # well inside the consumer's ack wait

    @streams.subscriber(names.all_file_done,
                        stream=JStream(names.outcomes_stream, declare=False),
                        durable=names.orchestrator_outcomes_consumer,
                        pull_sub=PullSub(batch_size=32, timeout=0.5),
                        ack_policy=AckPolicy.MANUAL, title="DownloadOutcome",
                        description="How each download job ended: release its permits.")
    async def on_outcome(outcome: DownloadOutcome, msg: NatsMessage, orch: Orch,
                         admission: Admit) -> None:
        await _ack_after(msg, lambda: orch.on_outcome(outcome), f"outcome of {outcome.job_id}",
                         heartbeat)
        await admission.try_admit()  # a slot was freed

    @streams.subscriber(names.max_deliveries_advisory(),
                        stream=JStream(names.advisories_stream, declare=False),
                        durable=names.orchestrator_advisories_consumer,
                        pull_sub=PullSub(batch_size=8, timeout=0.5),
                        ack_policy=AckPolicy.MANUAL, title="JobOutOfDeliveries",
                        description="JetStream gave up on a job: fail its file.")
    async def on_job_gave_up(advisory: MaxDeliveriesAdvisory, msg: NatsMessage,
                             orch: Orch) -> None:
        await _ack_after(msg, lambda: orch.on_job_gave_up(advisory.stream_seq),
                         f"failing the job at {advisory.stream_seq}", heartbeat)

    broker.include_router(commands)
    broker.include_router(streams)

    # What the orchestrator publishes. The shared job lifecycle (`tgdl.bus.jobs`) sends
    # jobs and given-up outcomes through these publishers; events are appended by the
    # event log (expected-sequence appends on the JetStream context), declared here so
    # the AsyncAPI document shows them.
    broker.publisher(names.waiting_job("{priority}", "{message_id}"),
                     stream=JStream(names.waiting_stream, declare=False),
                     schema=DownloadJob, title="WaitingJob",
                     description="A granted job waiting for room under the global cap, "
                                 "in its priority's line (high, normal, low); Nats-Msg-Id "
                                 "is the job id.")
    broker.publisher(names.download_jobs, stream=JStream(names.jobs_stream, declare=False),
                     schema=DownloadJob, title="DownloadJob",
                     description="One message to download, admitted from the waiting "
                                 "jobs best first while the queue has room under the "
                                 "global cap; Nats-Msg-Id is the job id.")
    broker.publisher(names.batch_events("{batch_id}"),
                     stream=JStream(names.events_stream, declare=False),
                     schema=list[BatchEvent], title="BatchEvents",
                     description="A batch's event log: each message holds what one "
                                 "decision appended (a JSON array of events, in order; "
                                 "a bare event object in logs written by older releases), "
                                 "appended with Nats-Expected-Last-Subject-Sequence; the "
                                 "Tgdl-Event-Type header lists their types.")
    broker.publisher(names.file_done("{message_id}"),
                     stream=JStream(names.outcomes_stream, declare=False),
                     schema=DownloadOutcome, title="DownloadOutcome (job given up)",
                     description="A job JetStream stopped redelivering ends as failed "
                                 "(worker_lost); Nats-Msg-Id is '<job_id>:done'.")
    return broker


# --- running ---------------------------------------------------------------------------------


async def sweep_forever(orch: Orchestrator, interval: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
        try:
            await orch.sweep()
        except Exception:
            log.exception("sweep failed; will try again")


class OrchestratorService:
    """The orchestrator in this process; `orch` is set once it serves."""

    orch: Orchestrator

    def __init__(self, settings: OrchestratorSettings) -> None:
        self.settings = settings

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        names = s.names
        # Started during an outage, wait for the servers instead of crash-looping.
        await until_reachable("PostgreSQL", lambda: verify_schema(s.database_url, s.db_schema),
                              log, stop)
        broker = create_broker(s)
        pool = None
        try:
            js = (await until_reachable("NATS", broker.connect, log, stop)).jetstream()
            await verify_topology(js, names)
            pool = await create_pool(s.database_url, s.db_schema)
            leases = await Leases.open(js, names)
            admission = Admission(js, names, s.priority_aging)
            orch = Orchestrator(s, Ports(
                log=EventLog(js, names),
                jobs=JobLifecycle(leases, BrokerPublisher(broker), names, admission),
                leases=leases,
                queued_jobs=JobStream(js, names),
                open_batches=await OpenBatches.open(js, names),
                catalog=PgCatalog(pool),
                clock=SystemClock(),
                files=await FileRecords.open(js, names),
            ))
            metrics.GLOBAL_CAP.set(s.global_cap)
            log.info("recovered %d open batches", await orch.recover())
            broker.context.set_global(ORCHESTRATOR, orch)
            broker.context.set_global(ADMISSION, admission)
            await broker.start()
            self.orch = orch
            loops = [asyncio.create_task(sweep_forever(orch, s.sweep_interval, stop)),
                     asyncio.create_task(admit_forever(admission, ADMIT_INTERVAL, stop))]
            try:
                await stop.wait()
            finally:
                for loop in loops:
                    loop.cancel()
                await asyncio.gather(*loops, return_exceptions=True)
        finally:
            await broker.stop()
            if pool is not None:
                await pool.close()


async def serve(settings: OrchestratorSettings, stop: asyncio.Event) -> None:
    await OrchestratorService(settings).run(stop)


def main() -> None:
    settings = load_settings(OrchestratorSettings, "orchestrator")
    run_service("orchestrator", lambda stop: serve(settings, stop))
