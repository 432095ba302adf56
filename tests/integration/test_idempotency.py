"""Safe retries of a start against real NATS: the same Idempotency-Key answers with the
first batch (the orchestrator asked once), another body with the key is a 422, a failed
start lets a retry start for real, and the keys live in a bucket with a one-day TTL."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time

import httpx
import pytest

from tgdl.bus.topology import QueuePolicy, ensure_topology
from tgdl.contracts.api import BatchDownloadRequest
from tgdl.contracts.commands import BatchAccepted, CommandReply
from tgdl.contracts.errors import ErrorCode, FileFailure
from tgdl.db.schema import migrate_database
from tgdl.gateway.app import create_app
from tgdl.gateway.settings import GatewaySettings

START = {"message_ids": [1, 2, 3], "max_concurrent": 2}


@pytest.fixture
async def gateway(servers, isolation, nc):
    settings = GatewaySettings(nats_url=servers.nats_url, database_url=servers.database_url,
                               namespace=isolation.namespace, db_schema=isolation.schema,
                               media_root=isolation.media_root, command_timeout=2.0,
                               projection_wait=0.2)
    await migrate_database(settings.database_url, settings.db_schema)
    await ensure_topology(nc.jetstream(), settings.names, QueuePolicy())  # as tgdl migrate
    app = create_app(settings)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://localhost") as client:
        yield client, settings


@pytest.fixture
async def orchestrator(gateway, nc):
    """A stand-in orchestrator that accepts every start as a new batch, counting them."""
    _, settings = gateway
    starts: list[bytes] = []
    delay = [0.0]

    async def answer(msg) -> None:
        starts.append(msg.data)
        await asyncio.sleep(delay[0])
        await msg.respond(CommandReply(ok=BatchAccepted(
            batch_id=f"batch_{len(starts)}", requested_ids=[1, 2, 3], started=[1, 2, 3],
            already_downloaded=[], already_downloading=[], failed_to_start=[],
        )).model_dump_json().encode())

    sub = await nc.subscribe(settings.names.cmd_batch_start, cb=answer)
    await nc.flush()
    yield starts, delay
    with contextlib.suppress(Exception):
        await sub.unsubscribe()


async def start(client, body=START, key: str | None = "retry-1") -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    return await client.post("/api/media/batch-download", json=body, headers=headers)


async def test_a_repeated_start_returns_the_first_batch(gateway, orchestrator):
    client, _ = gateway
    starts, _ = orchestrator
    first = await start(client)
    again = await start(client, body={"max_concurrent": 2, "message_ids": [1, 2, 3]})
    assert first.status_code == again.status_code == 200, (first.text, again.text)
    assert again.json() == first.json() and first.json()["batch_id"] == "batch_1"
    assert len(starts) == 1
    other = await start(client, key="retry-2")
    assert other.json()["batch_id"] == "batch_2"
    assert (await start(client, key=None)).json()["batch_id"] == "batch_3"


async def test_the_same_key_with_another_body_is_a_422(gateway, orchestrator):
    client, _ = gateway
    starts, _ = orchestrator
    assert (await start(client)).status_code == 200
    response = await start(client, body={"message_ids": [1, 2, 4], "max_concurrent": 2})
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "idempotency_key_reused"
    assert len(starts) == 1


async def test_repeats_sent_at_once_start_one_batch(gateway, orchestrator):
    client, _ = gateway
    starts, delay = orchestrator
    delay[0] = 0.3  # the first is still being answered when the others arrive
    answers = await asyncio.gather(*(start(client, key="at-once") for _ in range(4)))
    assert {a.status_code for a in answers} == {200}
    assert {a.json()["batch_id"] for a in answers} == {"batch_1"}
    assert len(starts) == 1


async def test_a_failed_start_lets_the_retry_start_for_real(gateway, nc):
    client, settings = gateway
    failed = await start(client, key="after-outage")  # no orchestrator yet: 503
    assert failed.status_code == 503, failed.text

    async def answer(msg) -> None:
        await msg.respond(CommandReply(ok=BatchAccepted(
            batch_id="batch_late", requested_ids=[1, 2, 3], started=[1, 2, 3],
            already_downloaded=[], already_downloading=[], failed_to_start=[],
        )).model_dump_json().encode())

    sub = await nc.subscribe(settings.names.cmd_batch_start, cb=answer)
    await nc.flush()
    try:
        retried = await start(client, key="after-outage")
        assert retried.status_code == 200, retried.text
        assert retried.json()["batch_id"] == "batch_late"
    finally:
        await sub.unsubscribe()


async def test_keys_are_kept_a_day(gateway, orchestrator, nc):
    client, settings = gateway
    kv = await nc.jetstream().key_value(settings.names.idempotency_bucket)
    assert (await kv.status()).ttl == pytest.approx(24 * 3600)
    assert (await start(client, key="k")).status_code == 200
    assert len([k async for k in _keys(kv)]) == 1


async def _keys(kv):
    for key in await kv.keys():
        yield key


@pytest.mark.parametrize("key", ["", "x" * 256])
async def test_a_bad_key_is_a_422(gateway, key):
    client, _ = gateway
    response = await client.post("/api/media/batch-download", json=START,
                                 headers={"Idempotency-Key": key})
    assert response.status_code == 422, response.text


async def test_a_claim_its_gateway_never_answered_is_taken_over(gateway, orchestrator, nc):
    client, settings = gateway
    starts, _ = orchestrator
    kv = await nc.jetstream().key_value(settings.names.idempotency_bucket)
    # what a gateway that died between claiming the key and answering leaves behind
    body = BatchDownloadRequest.model_validate(START).model_dump_json()
    await kv.create(hashlib.sha256(b"orphan").hexdigest(), json.dumps({
        "digest": hashlib.sha256(body.encode()).hexdigest(),
        "at": time.time() - 3600, "answer": None}).encode())
    response = await start(client, key="orphan")
    assert response.status_code == 200, response.text
    assert len(starts) == 1
    assert (await start(client, key="orphan")).json() == response.json()


async def test_a_large_answer_is_replayed_whole(gateway, nc):
    client, settings = gateway
    ids = list(range(1, 51))
    failures = [FileFailure.of_message(m, ErrorCode.no_media, f"message {m} " + "x" * 1500)
                for m in ids]  # more than a KV value may hold, uncompressed

    async def answer(msg) -> None:
        await msg.respond(CommandReply(ok=BatchAccepted(
            batch_id="batch_big", requested_ids=ids, started=[], already_downloaded=[],
            already_downloading=[], failed_to_start=failures)).model_dump_json().encode())

    sub = await nc.subscribe(settings.names.cmd_batch_start, cb=answer)
    await nc.flush()
    try:
        body = {"message_ids": ids, "max_concurrent": 2}
        first = await start(client, body=body, key="big")
        assert first.status_code == 200, first.text
        await sub.unsubscribe()  # the repeat must not reach an orchestrator
        again = await start(client, body=body, key="big")
        assert again.status_code == 200 and again.json() == first.json()
        assert len(again.json()["failed_to_start"]) == 50
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
