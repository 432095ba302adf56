"""The per-batch event log: one JetStream subject per batch, appended with optimistic
concurrency (`Nats-Expected-Last-Subject-Sequence`), replayed to rebuild a batch."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError, NotFoundError

from tgdl.contracts.events import BatchEvent, dump_event, parse_event
from tgdl.contracts.subjects import Names

WRONG_LAST_SEQUENCE = 10071  # JetStream's err_code for a failed expected-sequence check


STORE_FULL = 10077  # JetStream's err_code for a stream at its message or byte limit


class LogFull(Exception):
    """The events stream is at its size limit: nothing more can be appended."""


class ConcurrentAppend(Exception):
    """Someone else appended to this batch since we read it: reload and decide again."""


class EventLog:
    def __init__(self, js: JetStreamContext, names: Names) -> None:
        self._js = js
        self._names = names

    async def append(
        self, batch_id: str, events: Sequence[BatchEvent], expected_last_seq: int
    ) -> int:
        """Append in order; the first publish checks nobody wrote since `expected_last_seq`
        (the *stream* sequence of the subject's last message, 0 for a new batch).
        Returns the stream sequence of the last event appended."""
        subject = self._names.batch_events(batch_id)
        last = expected_last_seq
        for event in events:
            try:
                ack = await self._js.publish(
                    subject,
                    dump_event(event),
                    stream=self._names.events_stream,
                    headers={
                        "Nats-Expected-Last-Subject-Sequence": str(last),
                        "Tgdl-Event-Type": event.type,
                    },
                )
            except APIError as exc:
                if exc.err_code == WRONG_LAST_SEQUENCE:
                    raise ConcurrentAppend(batch_id) from exc
                if exc.err_code == STORE_FULL:
                    raise LogFull(str(exc.description)) from exc
                raise
            last = ack.seq
        return last

    async def last_seq(self, batch_id: str) -> int:
        """Stream sequence of the batch's last event (0: no such batch)."""
        try:
            last = await self._js.get_last_msg(
                self._names.events_stream, self._names.batch_events(batch_id))
        except NotFoundError:
            return 0
        return last.seq

    async def load(self, batch_id: str) -> tuple[list[BatchEvent], int]:
        """Every event of one batch and the stream sequence of the last (0: no such batch)."""
        subject = self._names.batch_events(batch_id)
        try:
            last = await self._js.get_last_msg(self._names.events_stream, subject)
        except NotFoundError:
            return [], 0
        events: list[BatchEvent] = []
        async for _seq, event in self._read(subject, until_seq=last.seq):
            events.append(event)
        return events, last.seq

    async def _read(
        self, subject: str, until_seq: int
    ) -> AsyncIterator[tuple[int, BatchEvent]]:
        sub = await self._js.pull_subscribe(
            subject,
            stream=self._names.events_stream,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.ALL,
                ack_policy=AckPolicy.NONE,
                inactive_threshold=30.0,
                max_waiting=1,
            ),
        )
        try:
            while True:
                try:
                    msgs = await sub.fetch(batch=256, timeout=2.0)
                except TimeoutError:
                    # nothing pending although we expected more: the rest aged out
                    return
                for msg in msgs:
                    seq = msg.metadata.sequence.stream
                    yield seq, parse_event(msg.data)
                    if seq >= until_seq:
                        return
        finally:
            await sub.unsubscribe()
