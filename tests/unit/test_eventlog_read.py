"""Reading a batch's log: a read that stops short because the connection went is an
error, never a shorter history (the orchestrator would decide on it and append after
the real last event); one that stops short with the connection up found the rest gone
(pruned), as before."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from tgdl.bus.eventlog import EventLog
from tgdl.contracts.events import BatchStarted, dump_events
from tgdl.contracts.subjects import Names


@dataclass
class FakeMsg:
    seq: int
    data: bytes

    @property
    def metadata(self):
        return type("Meta", (), {"sequence": type("Seq", (), {"stream": self.seq})()})()


@dataclass
class FakeSub:
    batches: list[list[FakeMsg]]

    async def fetch(self, batch: int, **_: float) -> list[FakeMsg]:
        if not self.batches:
            raise TimeoutError  # nothing more came
        return self.batches.pop(0)

    async def unsubscribe(self) -> None:
        pass


@dataclass
class FakeJetStream:
    """The first event is read, then the fetch for the rest (up to sequence 9) times out."""

    connected: bool
    _nc: object = field(init=False)

    def __post_init__(self) -> None:
        self._nc = type("Client", (), {"is_connected": self.connected})()

    async def get_last_msg(self, stream: str, subject: str):
        return type("Last", (), {"seq": 9})()

    async def pull_subscribe(self, subject: str, **kwargs) -> FakeSub:
        started = BatchStarted(batch_id="b", at=datetime(2026, 1, 1, tzinfo=UTC), kind="batch",
                               max_concurrent=1, force=False, requested_ids=[1],
                               to_download=[], already_downloaded=[], failed_to_start=[],
                               already_downloading=[])
        return FakeSub([[FakeMsg(1, dump_events([started]))]])


async def test_a_read_cut_short_by_a_lost_connection_is_an_error_not_a_shorter_history():
    log = EventLog(FakeJetStream(connected=False), Names("t"))
    with pytest.raises(ConnectionError, match="connection"):
        await log.load("b")


async def test_a_read_cut_short_with_the_connection_up_returns_what_is_left():
    log = EventLog(FakeJetStream(connected=True), Names("t"))
    events, last = await log.load("b")
    assert [type(e) for e in events] == [BatchStarted] and last == 9
