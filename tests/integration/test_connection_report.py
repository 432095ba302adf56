"""A NATS server that goes away and comes back: one warning, one info line with the time
it was down, nothing in between above DEBUG; a seed list whose first server is down."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging

import nats.errors
from waiting import until

from tgdl.bus import broker as broker_module
from tgdl.bus.broker import connect, nats_broker
from tgdl.launcher.embedded import free_port, start_nats


async def test_a_lost_connection_is_one_warning_and_one_line_when_back(tmp_path, caplog):
    server = start_nats(tmp_path / "nats", sync_always=False)
    nc = await connect(server.url, "t-report")
    try:
        caplog.set_level(logging.DEBUG, logger="tgdl.nats")
        server.process.kill()
        server.process.wait()
        await until(lambda: not nc.is_connected, within=10, what="disconnected")
        await until(lambda: len([r for r in caplog.records if r.levelno == logging.DEBUG]) >= 2,
                    within=10, what="reconnect attempts")
        server = start_nats(tmp_path / "nats", port=server.port, sync_always=False)
        await until(lambda: nc.is_connected, within=15, what="reconnected")
        await until(lambda: any(r.levelno == logging.INFO for r in caplog.records),
                    within=5, what="the line saying it is back")
        loud = [(r.levelname, r.getMessage()) for r in caplog.records
                if r.levelno >= logging.INFO]
        assert len(loud) == 2, loud
        (lost_level, lost), (back_level, back) = loud
        assert lost_level == "WARNING" and "t-report lost its NATS connection" in lost
        assert f":{server.port}" in lost
        assert back_level == "INFO" and "reconnected to NATS" in back and " after " in back
        assert all(r.exc_info is None for r in caplog.records)
    finally:
        await nc.close()
        server.stop()


async def test_a_service_connects_through_a_seed_list_whose_first_server_is_down(servers):
    dead = f"nats://127.0.0.1:{free_port()}"
    # in the given order, so the dead seed is really tried first
    broker = nats_broker(f"{dead}, {servers.nats_url}", "t-seeds", dont_randomize=True)
    await broker.connect()
    try:
        assert broker.connection.is_connected
        assert broker.connection.connected_url.port == int(servers.nats_url.rsplit(":", 1)[1])
    finally:
        await broker.stop()


async def test_a_pull_subscriber_waits_out_an_outage_without_spinning(tmp_path, caplog):
    """While the server is away, a pull consumer's fetch requests would pile up in the
    client's reconnect buffer (one per fetch timeout); once it is full, every fetch fails
    at once and FastStream restarts the consumer task at once, forever: a core busy and
    memory growing in a service left without its server. A fetch while disconnected
    waits instead, and the consumer takes messages again once the server is back."""
    from faststream.nats import JStream, PullSub

    server = start_nats(tmp_path / "nats", sync_always=False)
    # a small reconnect buffer: full after a few publishes, as hours of fetches fill 2 MB
    broker = nats_broker(server.url, "t-pull", pending_size=4096)
    got: list[bytes] = []
    stream = JStream("t_pull", subjects=["t.pull"])

    @broker.subscriber("t.pull", stream=stream, durable="t_pull",
                       pull_sub=PullSub(batch_size=1, timeout=0.1))
    async def take(body: bytes) -> None:
        got.append(body)

    await broker.start()
    try:
        await broker.publish(b"before", "t.pull", stream="t_pull")
        await until(lambda: got == [b"before"], within=10, what="the first message")
        caplog.set_level(logging.DEBUG)
        server.process.kill()
        server.process.wait()
        nc = broker.connection
        await until(lambda: not nc.is_connected, within=10, what="disconnected")
        with contextlib.suppress(nats.errors.OutboundBufferLimitError):
            while True:  # whatever else the service publishes meanwhile fills the buffer
                await nc.publish("t.other", b"x" * 512)
        # ten reconnect attempts (half a second apart) is the clock of this window
        await until(lambda: sum("connection error" in r.getMessage()
                                for r in caplog.records) >= 10,
                    within=30, what="ten reconnect attempts")
        restarts = [r for r in caplog.records if "is being executed" in r.getMessage()
                    or "raised an exception" in r.getMessage()]
        assert len(restarts) <= 1, f"the consumer task was restarted {len(restarts)} times"
        server = start_nats(tmp_path / "nats", port=server.port, sync_always=False)
        await until(lambda: nc.is_connected, within=15, what="reconnected")
        await broker.publish(b"after", "t.pull", stream="t_pull")
        await until(lambda: got == [b"before", b"after"], within=15,
                    what="a message taken after the outage")
    finally:
        await broker.stop()
        server.stop()


async def test_a_consumer_task_that_keeps_failing_is_restarted_later_and_later(
        tmp_path, caplog, monkeypatch):
    """FastStream restarts a failed consumer task at once: a failure that repeats at once
    would be a busy core and a dead task kept per restart. The restarts wait longer and
    longer, and once the fault is gone the consumer takes messages again."""
    from faststream.nats import JStream, PullSub
    from nats.js.client import JetStreamContext

    server = start_nats(tmp_path / "nats", sync_always=False)
    broker = nats_broker(server.url, "t-failing")
    got: list[bytes] = []
    subscriber = broker.subscriber("t.failing", stream=JStream("t_failing", subjects=["t.failing"]),
                                   durable="t_failing", pull_sub=PullSub(batch_size=1, timeout=0.1))

    @subscriber
    async def take(body: bytes) -> None:
        got.append(body)

    fetch = JetStreamContext.PullSubscription.fetch
    broken = True

    async def failing_fetch(self, *args, **kwargs):
        if broken:
            raise RuntimeError("the fetch fails at once")
        return await fetch(self, *args, **kwargs)

    monkeypatch.setattr(JetStreamContext.PullSubscription, "fetch", failing_fetch)
    monkeypatch.setattr(broker_module, "HEALTHY_RUN", 1.0)
    caplog.set_level(logging.INFO)
    await broker.start()
    try:
        def restarts() -> list[float]:
            return [r.created for r in caplog.records if "is being executed" in r.getMessage()]

        # FastStream's line for each restart
        await until(lambda: len(restarts()) >= 5, within=20, what="five restarts")
        gaps = [b - a for a, b in itertools.pairwise(restarts())]
        # at once, then after 0.1, 0.25, 0.5 and 1 s
        assert gaps[-2] >= 0.45 and gaps[-1] >= 0.9, gaps
        assert len(subscriber.tasks) <= 1, "dead tasks are let go"
        broken = False
        await broker.publish(b"mended", "t.failing", stream="t_failing")
        await until(lambda: got == [b"mended"], within=15, what="a message after the fault")

        # a task that ran long enough starts the delays over: a new fault is retried at
        # once, then after 0.1 s, not after the 2 s the last streak had reached
        await asyncio.sleep(broker_module.HEALTHY_RUN)  # the healthy run itself
        seen = len(restarts())
        broken = True
        await until(lambda: len(restarts()) >= seen + 3, within=20, what="three restarts")
        again = [b - a for a, b in itertools.pairwise(restarts()[seen:])]
        assert again[0] < 1.5, again
    finally:
        await broker.stop()
        server.stop()
