"""The per-batch event log: one JetStream subject per batch, appended with optimistic
concurrency (`Nats-Expected-Last-Subject-Sequence`), replayed to rebuild a batch.

What one decision produces is appended as one message (`dump_events`): one fsynced
publish and one round trip however many events, and a decision is stored whole or not
at all, so no reader ever sees half of one."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError, NotFoundError

from tgdl.contracts.events import (
    EVENT_TYPES_HEADER,
    BatchEvent,
    dump_events,
    event_types,
    parse_events,
)
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
        """Append one decision's events as one message, provided nobody wrote since
        `expected_last_seq` (the *stream* sequence of the subject's last message, 0 for a
        new batch). Returns the stream sequence of the message."""
        if not events:
            return expected_last_seq
        try:
            ack = await self._js.publish(
                self._names.batch_events(batch_id),
                dump_events(events),
                stream=self._names.events_stream,
                headers={
                    "Nats-Expected-Last-Subject-Sequence": str(expected_last_seq),
                    EVENT_TYPES_HEADER: event_types(events),
                },
            )
        except APIError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                raise ConcurrentAppend(batch_id) from exc
            if exc.err_code == STORE_FULL:
                raise LogFull(str(exc.description)) from exc
            raise
        return ack.seq

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
                    if not self._js._nc.is_connected:
                        # the answer went with the connection: a shorter history would be
                        # decided on and appended after the real last event
                        raise ConnectionError(
                            f"the NATS connection went while reading {subject}") from None
                    # nothing pending although we expected more: the rest aged out
                    return
                for msg in msgs:
                    seq = msg.metadata.sequence.stream
                    for event in parse_events(msg.data):
                        yield seq, event
                    if seq >= until_seq:
                        return
        finally:
            await sub.unsubscribe()
