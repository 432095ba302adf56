"""Streams, consumers and buckets: declared in one place (`tgdl migrate`, which `tgdl run`
and compose call before any service starts); services only verify they exist."""

from __future__ import annotations

from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError

from tgdl.contracts.config import CommonSettings
from tgdl.contracts.subjects import Names

DAY = 24 * 3600.0
IDEMPOTENCY_TTL = DAY  # how long a start's Idempotency-Key is remembered
STREAM_NAME_IN_USE = 10058  # JetStream's err_code: the stream exists with another config
KIB = 1024
# The largest message each stream takes (a batch start lists up to 1000 catalog entries).
MAX_EVENT_BYTES = 1024 * KIB
MAX_SMALL_BYTES = 64 * KIB  # jobs, outcomes, progress, advisories, KV values


@dataclass(frozen=True)
class QueuePolicy:
    """How download jobs are leased to downloaders, and how streams are kept."""

    ack_wait: float = 4.0  # a downloader heartbeats well inside this while it works
    outcome_ack_wait: float = 2.0  # likewise an orchestrator handling an outcome
    max_deliver: int = 6  # then the job ends as failed, never an endless loop
    global_cap: int = 8  # downloads in flight across all batches and replicas
    replicas: int = 1  # copies of every stream and bucket (3 on a NATS cluster)
    # Outcomes are read once by an orchestrator, then only by a rebuild of the read model.
    # Batch logs have no age: an open batch (a pause of months) must keep its truth, and
    # `tgdl prune` forgets finished ones, marker and all in the read model.
    outcomes_max_age: float = 30 * DAY
    duplicate_window: float = 600.0  # job re-publishes after a crash are dropped within it
    # Storage bounds (CommonSettings documents them).
    events_max_msgs: int = 5_000_000
    outcomes_max_msgs: int = 1_000_000
    jobs_max_msgs: int = 100_000
    progress_max_msgs: int = 100_000
    advisories_max_msgs: int = 10_000
    bucket_max_keys: int = 100_000

    @classmethod
    def of(cls, settings: CommonSettings) -> QueuePolicy:
        return cls(ack_wait=settings.ack_wait, outcome_ack_wait=settings.outcome_ack_wait,
                   max_deliver=settings.max_deliver,
                   global_cap=settings.global_cap, replicas=settings.stream_replicas,
                   events_max_msgs=settings.events_max_msgs,
                   outcomes_max_msgs=settings.outcomes_max_msgs,
                   jobs_max_msgs=settings.jobs_max_msgs,
                   progress_max_msgs=settings.progress_max_msgs,
                   bucket_max_keys=settings.bucket_max_keys)


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except BadRequestError as exc:
        if exc.err_code != STREAM_NAME_IN_USE:
            raise
        await js.update_stream(config)


def stream_configs(names: Names, policy: QueuePolicy) -> list[StreamConfig]:
    """Every stream is bounded, by message count and message size. What a full stream
    does follows from what it holds:
    the batch logs and the job queue refuse new messages (a new batch is refused with
    `storage_full`, a dispatch is retried by the sweep) rather than silently lose the
    truth or a job; outcomes, progress and advisories drop their oldest messages."""
    kept = {"storage": StorageType.FILE, "num_replicas": policy.replicas}
    return [
        StreamConfig(name=names.events_stream, subjects=[names.all_batch_events],
                     retention=RetentionPolicy.LIMITS,
                     max_msgs=policy.events_max_msgs, max_msg_size=MAX_EVENT_BYTES,
                     discard=DiscardPolicy.NEW,
                     duplicate_window=policy.duplicate_window, **kept),
        StreamConfig(name=names.jobs_stream, subjects=[names.download_jobs],
                     retention=RetentionPolicy.WORK_QUEUE, max_msgs=policy.jobs_max_msgs,
                     max_msg_size=MAX_SMALL_BYTES, discard=DiscardPolicy.NEW,
                     duplicate_window=policy.duplicate_window, **kept),
        # granted jobs waiting for room under the global cap (see tgdl.bus.admission);
        # admitted ones are deleted, so it holds what waits, like the queue itself
        StreamConfig(name=names.waiting_stream, subjects=[names.waiting_jobs()],
                     retention=RetentionPolicy.LIMITS, max_msgs=policy.jobs_max_msgs,
                     max_msg_size=MAX_SMALL_BYTES, discard=DiscardPolicy.NEW,
                     duplicate_window=policy.duplicate_window, **kept),
        StreamConfig(name=names.outcomes_stream, subjects=[names.all_file_done],
                     retention=RetentionPolicy.LIMITS, max_age=policy.outcomes_max_age,
                     max_msgs=policy.outcomes_max_msgs, max_msg_size=MAX_SMALL_BYTES,
                     discard=DiscardPolicy.OLD,
                     duplicate_window=policy.duplicate_window, **kept),
        # only the latest progress of a file matters
        StreamConfig(name=names.progress_stream, subjects=[names.all_file_progress],
                     retention=RetentionPolicy.LIMITS, max_msgs_per_subject=1,
                     max_msgs=policy.progress_max_msgs, max_msg_size=MAX_SMALL_BYTES,
                     discard=DiscardPolicy.OLD, max_age=DAY, **kept),
        # stored, so a job JetStream gave up on is failed even if no orchestrator ran then
        StreamConfig(name=names.advisories_stream, subjects=[names.max_deliveries_advisory()],
                     retention=RetentionPolicy.LIMITS, max_age=7 * DAY,
                     max_msgs=policy.advisories_max_msgs, max_msg_size=MAX_SMALL_BYTES,
                     discard=DiscardPolicy.OLD, **kept),
    ]


async def ensure_topology(js: JetStreamContext, names: Names, policy: QueuePolicy) -> None:
    for config in stream_configs(names, policy):
        await _ensure_stream(js, config)
    await js.add_consumer(
        names.jobs_stream,
        ConsumerConfig(
            durable_name=names.downloader_consumer,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=policy.ack_wait,
            max_deliver=policy.max_deliver,
            max_ack_pending=policy.global_cap,  # the global cap, enforced by JetStream
            filter_subject=names.download_jobs,
        ),
    )
    for stream, durable in ((names.outcomes_stream, names.orchestrator_outcomes_consumer),
                            (names.advisories_stream, names.orchestrator_advisories_consumer)):
        await js.add_consumer(stream, ConsumerConfig(
            durable_name=durable, ack_policy=AckPolicy.EXPLICIT,
            ack_wait=policy.outcome_ack_wait,
            deliver_policy=DeliverPolicy.ALL))
    for bucket in (names.leases_bucket, names.flood_bucket, names.open_batches_bucket):
        await _ensure_bucket(js, KeyValueConfig(
            bucket=bucket, history=1, storage=StorageType.FILE, replicas=policy.replicas,
            max_value_size=MAX_SMALL_BYTES), policy.bucket_max_keys)
    # Which Telegram files were downloaded where: when full, the oldest records go (a
    # forward of a file forgotten here is downloaded again, nothing breaks).
    await _ensure_bucket(js, KeyValueConfig(
        bucket=names.files_bucket, history=1, storage=StorageType.FILE,
        replicas=policy.replicas, max_value_size=MAX_SMALL_BYTES), policy.bucket_max_keys,
        discard=DiscardPolicy.OLD)
    # Retried starts answered from here for a day (the keys expire with the bucket's TTL).
    await _ensure_bucket(js, KeyValueConfig(
        bucket=names.idempotency_bucket, history=1, storage=StorageType.FILE,
        replicas=policy.replicas, max_value_size=MAX_SMALL_BYTES, ttl=IDEMPOTENCY_TTL),
        policy.bucket_max_keys)


async def _ensure_bucket(js: JetStreamContext, config: KeyValueConfig, max_keys: int,
                         discard: DiscardPolicy = DiscardPolicy.NEW) -> None:
    try:
        await js.create_key_value(config)
    except BadRequestError as exc:
        if exc.err_code != STREAM_NAME_IN_USE:
            raise
    # KeyValueConfig has no count limit: set it on the bucket's stream (history 1: one
    # message per key), and bring an existing bucket to this release's settings in place
    stream = (await js.stream_info(f"KV_{config.bucket}")).config
    stream.max_msgs = max_keys
    stream.max_msg_size = config.max_value_size
    stream.num_replicas = config.replicas
    stream.discard = discard
    await js.update_stream(stream)


class TopologyMissing(RuntimeError):
    """A stream, consumer or bucket a service needs does not exist (yet)."""


async def verify_topology(js: JetStreamContext, names: Names) -> None:
    """Check that `ensure_topology` ran for this namespace; services call this at start
    instead of declaring anything themselves."""
    missing: list[str] = []
    for config in stream_configs(names, QueuePolicy()):
        try:
            await js.stream_info(config.name)
        except NotFoundError:
            missing.append(f"stream {config.name}")
    for stream, durable in ((names.jobs_stream, names.downloader_consumer),
                            (names.outcomes_stream, names.orchestrator_outcomes_consumer),
                            (names.advisories_stream, names.orchestrator_advisories_consumer)):
        if f"stream {stream}" in missing:
            continue
        try:
            await js.consumer_info(stream, durable)
        except NotFoundError:
            missing.append(f"consumer {durable} of {stream}")
    for bucket in (names.leases_bucket, names.flood_bucket, names.open_batches_bucket,
                   names.files_bucket):
        try:
            await js.stream_info(f"KV_{bucket}")
        except NotFoundError:
            missing.append(f"bucket {bucket}")
    if missing:
        raise TopologyMissing(
            f"NATS lacks {', '.join(missing)} for namespace {names.prefix!r}: run "
            "`tgdl migrate` (tgdl run and docker compose do it before starting services)")
