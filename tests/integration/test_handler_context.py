"""Handler arguments taken from FastStream's context (the message, the running service)
are resolved on the event loop: fast_depends would run a synchronous resolver in a worker
thread, one thread round trip per argument of every message."""

from __future__ import annotations

import asyncio
from typing import Annotated

import anyio.to_thread

from tgdl.bus.broker import LoopContext, Message, nats_broker


async def test_context_arguments_never_wait_on_a_worker_thread(servers, isolation, monkeypatch):
    hops: list[object] = []
    real = anyio.to_thread.run_sync

    async def counted(func, *args, **kwargs):
        hops.append(func)
        return await real(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counted)
    broker = nats_broker(servers.nats_url, "context-test")
    got: asyncio.Future = asyncio.get_running_loop().create_future()
    subject = f"{isolation.namespace}.context"

    @broker.subscriber(subject)
    async def handle(body: str, msg: Message,
                     service: Annotated[str, LoopContext("service")]) -> None:
        got.set_result((body, msg.raw_message.subject, service))

    broker.context.set_global("service", "the running service")
    await broker.start()
    try:
        await broker.publish("hello", subject)
        assert await asyncio.wait_for(got, 10) == ("hello", subject, "the running service")
    finally:
        await broker.stop()
    assert hops == []
