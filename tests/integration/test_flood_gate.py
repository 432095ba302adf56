"""A flood wait is shared by every replica of one account through its key in the flood
bucket, on real NATS: a replica told to wait makes the others wait too (also one that
starts later), a shorter wait never shortens a longer one, and another account is not
held."""

from __future__ import annotations

import asyncio
import json

import pytest
from nats.js.errors import KeyNotFoundError
from waiting import until

from tgdl.bus.topology import QueuePolicy, ensure_topology
from tgdl.contracts.subjects import Names
from tgdl.downloader.flood import FloodGate

ACCOUNT = "me@example"


@pytest.fixture
async def kv(nc, isolation):
    js = nc.jetstream()
    names = Names(isolation.namespace)
    await ensure_topology(js, names, QueuePolicy())
    return await js.key_value(names.flood_bucket)


@pytest.fixture
async def gate(kv):
    """Start a replica's gate (stopped after the test)."""
    started: list[FloodGate] = []

    async def start(account: str = ACCOUNT, replica: str = "r") -> FloodGate:
        made = FloodGate(kv, account, replica)
        await made.start()
        started.append(made)
        return made
    yield start
    for made in started:
        await made.stop()


async def stored_wait(kv, account: str = ACCOUNT) -> float | None:
    """The shared wait's length as stored, None when the account has none."""
    key = FloodGate(kv, account, "-")._key
    try:
        return json.loads((await kv.get(key)).value)["seconds"]
    except KeyNotFoundError:
        return None


async def test_one_replicas_wait_holds_every_replica_of_the_account_and_no_other(gate, kv):
    one, two, other = await gate(replica="r1"), await gate(replica="r2"), await gate("other")
    assert one.remaining() == two.remaining() == 0

    await one.hold(30)

    assert 25 < one.remaining() <= 30
    await until(lambda: two.remaining() > 25, 5, what="the other replica sees the wait")
    assert await stored_wait(kv) == 30 and await stored_wait(kv, "other") is None
    assert other.remaining() == 0
    late = await gate(replica="r4")  # started during the wait: reads it at once
    await until(lambda: late.remaining() > 25, 5, what="a replica started later sees it")


async def test_a_shorter_wait_never_shortens_a_longer_one_and_a_longer_one_extends_it(
        gate, kv):
    one, two = await gate(replica="r1"), await gate(replica="r2")
    await one.hold(30)

    await two.hold(5)  # told later, for less: the longer wait stays the shared one
    assert await stored_wait(kv) == 30
    assert two.remaining() > 25

    await two.hold(60)
    assert await stored_wait(kv) == 60
    await until(lambda: one.remaining() > 55, 5, what="the longer wait reaches the first")


async def test_replicas_told_at_the_same_time_keep_the_longest_wait(gate, kv):
    one, two = await gate(replica="r1"), await gate(replica="r2")

    await asyncio.gather(one.hold(40), two.hold(10), one.hold(20), two.hold(50))

    assert await stored_wait(kv) == 50
    await until(lambda: one.remaining() > 45 and two.remaining() > 45, 5,
                what="both replicas hold the longest wait")
