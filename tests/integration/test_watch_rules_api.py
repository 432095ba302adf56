"""Watch rules over HTTP, with the catalog service running (in this process) on a
simulated Telegram, real NATS and PostgreSQL, and a stand-in orchestrator answering the
starts on NATS: created, listed, paused and deleted; bad input is 422 with what is wrong;
a token limited to chats sees and makes only its chats' rules; a rule starts each new
matching message once, in batches of at most the batch limit, also when its starts were
cut short."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from nats.errors import NoRespondersError
from sim_helpers import running_sim
from waiting import until

from tgdl.catalog.app import serve as serve_catalog
from tgdl.catalog.settings import CatalogSettings
from tgdl.catalog.watcher import RuleRunner
from tgdl.contracts.commands import BatchAccepted, CommandReply, StartBatch
from tgdl.contracts.rules import DeleteRule, RuleCreate
from tgdl.db import catalog as catalog_db
from tgdl.db import rules
from tgdl.db.connection import create_pool
from tgdl.gateway.settings import GatewaySettings
from tgdl.simtelegram import client as sim_client

ADMIN = {"Authorization": "Bearer admin-token"}
LIMITED = {"Authorization": "Bearer private-token"}  # may read sim_private only


@pytest.fixture
async def sim_url() -> AsyncIterator[str]:
    async with running_sim() as url:
        yield url


@pytest.fixture
def settings(servers, isolation, sim_url) -> GatewaySettings:
    return GatewaySettings(
        nats_url=servers.nats_url, database_url=servers.database_url,
        namespace=isolation.namespace, db_schema=isolation.schema,
        media_root=isolation.media_root, command_timeout=3.0,
        api_token="admin-token", api_tokens="private-token@sim_private")


@pytest.fixture
async def seeded(app, db, sim_url) -> None:
    await catalog_db.upsert(db, await sim_client.fetch_catalog(sim_url))


@pytest.fixture
async def starts(nc, settings) -> AsyncIterator[list[StartBatch]]:
    """A stand-in orchestrator: accepts every start and remembers it."""
    seen: list[StartBatch] = []

    async def accept(msg) -> None:
        cmd = StartBatch.model_validate_json(msg.data)
        seen.append(cmd)
        reply = CommandReply(ok=BatchAccepted(
            batch_id=cmd.batch_id, requested_ids=cmd.message_ids, started=cmd.message_ids,
            already_downloaded=[], already_downloading=[], failed_to_start=[]))
        await msg.respond(reply.model_dump_json().encode())

    sub = await nc.subscribe(settings.names.cmd_batch_start, cb=accept)
    yield seen
    await sub.unsubscribe()


@pytest.fixture
def sync_interval() -> float:
    return 0.1


@pytest.fixture
async def catalog(seeded, settings, sim_url, nc, sync_interval) -> AsyncIterator[None]:
    """The catalog service, syncing every 0.1 s, with a batch limit of 2."""
    stop = asyncio.Event()
    service = asyncio.create_task(serve_catalog(CatalogSettings(
        nats_url=settings.nats_url, database_url=settings.database_url,
        namespace=settings.namespace, db_schema=settings.db_schema, sim_url=sim_url,
        sync_interval=sync_interval, max_batch_ids=2), stop))

    async def answering():
        with contextlib.suppress(NoRespondersError, TimeoutError):
            body = DeleteRule(rule_id="rule_00000000").model_dump_json().encode()
            return await nc.request(settings.names.cmd_rule_delete, body, timeout=1)
    await until(answering, 20, what="catalog service answering")
    yield
    stop.set()
    await service


async def create(client, headers=ADMIN, expect: int = 201, **body) -> dict:
    r = await client.post("/api/rules", json={"chat": "sim_demo", **body}, headers=headers)
    assert r.status_code == expect, r.text
    return r.json()


async def test_rules_are_created_listed_paused_resumed_and_deleted(client, catalog):
    rule = await create(client, media_types=["video"], min_size=1000, caption_regex="^a",
                        name_template="{message_id}_{name}", max_concurrent=2)
    rule_id = rule["rule_id"]
    assert rule["chat"] == "sim_demo" and rule["enabled"] is True
    assert (rule["media_types"], rule["min_size"], rule["caption_regex"],
            rule["name_template"], rule["max_concurrent"]) == (
        ["video"], 1000, "^a", "{message_id}_{name}", 2)
    listed = (await client.get("/api/rules", headers=ADMIN)).json()["rules"]
    assert [r["rule_id"] for r in listed] == [rule_id]

    r = await client.patch(f"/api/rules/{rule_id}", json={"enabled": False}, headers=ADMIN)
    assert (r.status_code, r.json()["enabled"]) == (200, False)
    r = await client.patch(f"/api/rules/{rule_id}", json={"enabled": True}, headers=ADMIN)
    assert (r.status_code, r.json()["enabled"]) == (200, True)

    r = await client.delete(f"/api/rules/{rule_id}", headers=ADMIN)
    assert (r.status_code, r.json()["rule_id"]) == (200, rule_id)
    assert (await client.get("/api/rules", headers=ADMIN)).json() == {"rules": []}
    r = await client.delete(f"/api/rules/{rule_id}", headers=ADMIN)
    assert (r.status_code, r.json()["error"]) == (404, "rule_not_found")
    r = await client.patch("/api/rules/not-a-rule", json={"enabled": True}, headers=ADMIN)
    assert r.status_code == 422


@pytest.mark.parametrize(("body", "error", "says"), [
    ({"caption_regex": "(unclosed"}, "invalid_request", "not a valid regular expression"),
    ({"min_size": 10, "max_size": 5}, "invalid_request", "min_size must not exceed max_size"),
    ({"media_types": ["photo", "sticker"]}, "invalid_request",
     "media_types.1: 'sticker' is not one of 'photo', 'video', 'document', 'audio' or 'voice'"),
    ({"chat": "no_such_chat"}, "unknown_chat", "no chat 'no_such_chat'"),
    ({"enabled": "maybe"}, "invalid_request", "enabled"),
    ({"enabled": "false"}, "invalid_request", "enabled: must be true or false"),
    ({"min_size": "1000"}, "invalid_request", "min_size: must be an integer"),
])
async def test_bad_rules_are_422_saying_what_is_wrong(client, catalog, body, error, says):
    answer = await create(client, expect=422, **body)
    assert answer["error"] == error and says in str(answer["detail"]), answer
    assert (await client.get("/api/rules", headers=ADMIN)).json() == {"rules": []}


async def test_a_token_limited_to_chats_sees_and_makes_only_its_chats_rules(client, catalog):
    mine = await create(client, LIMITED, chat="sim_private")
    theirs = await create(client, ADMIN)
    refused = await create(client, LIMITED, expect=403)
    assert refused["error"] == "access_denied"
    listed = (await client.get("/api/rules", headers=LIMITED)).json()["rules"]
    assert [r["rule_id"] for r in listed] == [mine["rule_id"]]
    for method, body in (("PATCH", {"enabled": False}), ("DELETE", None)):
        r = await client.request(method, f"/api/rules/{theirs['rule_id']}", json=body,
                                 headers=LIMITED)
        assert (r.status_code, r.json()["error"]) == (404, "rule_not_found")
    assert len((await client.get("/api/rules", headers=ADMIN)).json()["rules"]) == 2


async def test_without_a_catalog_service_rule_changes_are_503_naming_it(client, seeded):
    answer = await create(client, expect=503)
    assert answer["error"] == "catalog_unavailable" and "catalog" in answer["suggestion"]
    assert (await client.get("/api/rules", headers=ADMIN)).json() == {"rules": []}


async def test_a_rule_starts_new_matching_media_once_in_batches_of_the_limit(
        client, catalog, starts, sim_url, db):
    # created paused: what arrives meanwhile is started at the resume, all in one round
    rule = await create(client, media_types=["video", "document"], min_size=50_000,
                        caption_regex="^keep", max_concurrent=4,
                        name_template="{message_id}_{name}",
                        enabled=False)
    post = sim_client.post_message
    matching = [(await post(sim_url, "sim_demo", media_kind=kind, size=size,
                            caption="keep me")).message_id
                for kind, size in (("video", 60_000), ("document", 70_000), ("video", 80_000))]
    for kind, size, caption in (("photo", 60_000, "keep me"), ("video", 10_000, "keep me"),
                                ("video", 60_000, "not me"), (None, None, "keep: text")):
        await post(sim_url, "sim_demo", media_kind=kind, size=size, caption=caption)
    last = await post(sim_url, "sim_private", media_kind="video", size=60_000,
                      caption="keep me")

    async def synced():
        return await db.fetchval("SELECT 1 FROM catalog WHERE message_id = $1", last.message_id)
    await until(synced, 10, what="the new messages in the catalog")
    assert starts == []  # paused
    r = await client.patch(f"/api/rules/{rule['rule_id']}", json={"enabled": True},
                           headers=ADMIN)
    assert r.status_code == 200, r.text
    await until(lambda: sum(len(s.message_ids) for s in starts) >= 3, 10, what="3 starts")
    assert [s.message_ids for s in starts] == [matching[:2], matching[2:]]  # limit 2
    assert {(s.rule_id, s.max_concurrent, tuple(s.chats or ())) for s in starts} == {
        (rule["rule_id"], 4, ("sim_demo",))}
    assert len({s.batch_id for s in starts}) == 2
    assert {s.name_template for s in starts} == {"{message_id}_{name}"}
    [listed] = (await client.get("/api/rules", headers=ADMIN)).json()["rules"]
    assert (listed["batches_started"], listed["files_started"],
            listed["last_batch_id"]) == (2, 3, starts[-1].batch_id)
    # more rounds go by: only the next new message is started
    later = (await post(sim_url, "sim_demo", media_kind="video", size=90_000,
                        caption="keep too")).message_id
    await until(lambda: len(starts) == 3, 10, what="the fourth message started")
    assert starts[-1].message_ids == [later]


async def test_a_rule_may_start_the_chats_messages_already_listed_too(
        client, catalog, starts, db):
    entries = await catalog_db.entries_of(db, "chat = $1 ORDER BY telegram_message_id",
                                          "sim_demo")
    voice = RuleCreate(chat="sim_demo", media_types=["voice"])
    listed = [e.message_id for e in entries if voice.matches(e)]
    assert len(listed) >= 3  # the seeded catalog's voice notes: more than one batch
    before = await create(client, media_types=["voice"])  # only what comes later
    rule = await create(client, media_types=["voice"], include_existing=True)
    await until(lambda: sum(len(s.message_ids) for s in starts) >= len(listed), 10,
                what="the voice notes already listed started")
    assert all(s.rule_id == rule["rule_id"] for s in starts)
    assert [m for s in starts for m in s.message_ids] == listed  # each once, in chat order
    assert all(len(s.message_ids) <= 2 for s in starts)  # the batch limit
    [_, mine] = (await client.get("/api/rules", headers=ADMIN)).json()["rules"]
    assert (mine["rule_id"], mine["files_started"]) == (rule["rule_id"], len(listed))
    assert "include_existing" not in mine and before["files_started"] == 0


@pytest.mark.parametrize("sync_interval", [3600.0])  # nothing is found by a sync here
async def test_a_link_to_a_message_no_sync_listed_is_fetched_from_telegram(
        client, catalog, sim_url, db):
    new = await sim_client.post_message(sim_url, "sim_demo", media_kind="video", size=5000,
                                        caption="just posted")
    assert await db.fetchval("SELECT count(*) FROM catalog WHERE message_id = $1",
                             new.message_id) == 0
    links = [f"https://t.me/sim_demo/{new.telegram_message_id}",
             f"https://t.me/sim_demo/{new.telegram_message_id + 500}", "t.me/nochat/5"]
    r = await client.get("/api/messages/resolve", params={"link": links}, headers=ADMIN)
    assert r.status_code == 200, r.text
    found, missing, unknown = r.json()["items"]
    assert found["message_id"] == new.message_id  # fetched into the catalog, then named
    assert missing["error"] == "message_not_found"
    assert missing["detail"] == (f"chat 'sim_demo' has no message "
                                 f"{new.telegram_message_id + 500} with media (it may have "
                                 "been deleted, or carry only text)")
    # Telegram answered that the account cannot read that chat
    assert unknown["error"] == "access_denied"
    assert unknown["detail"] == ("Cannot read 'nochat': the simulated Telegram has no chat "
                                 "'nochat'")
    assert "Join the chat" in unknown["suggestion"]


async def test_a_start_cut_short_is_sent_again_under_its_batch_id_never_claimed_twice(
        app, seeded, settings):
    pool = await create_pool(settings.database_url, settings.db_schema)
    try:
        async with pool.acquire() as conn:
            rule = await rules.create(conn, RuleCreate(chat="sim_demo"), "sim_demo",
                                      checked_through=0)
        sent: list[StartBatch] = []

        async def lost(cmd: StartBatch) -> CommandReply:
            sent.append(cmd)
            raise TimeoutError  # the orchestrator never answered (or we died meanwhile)

        async def answered(cmd: StartBatch) -> CommandReply:
            sent.append(cmd)
            return CommandReply(ok=BatchAccepted(
                batch_id=cmd.batch_id, requested_ids=cmd.message_ids,
                started=cmd.message_ids, already_downloaded=[], already_downloading=[],
                failed_to_start=[]))

        assert await RuleRunner(pool, lost, max_files=10).run_once() == 0
        first = [(s.batch_id, s.message_ids) for s in sent]
        assert len(first) >= 2 and all(len(ids) <= 10 for _, ids in first)
        sent.clear()
        # a restarted service sends the same starts again, and claims nothing new
        assert await RuleRunner(pool, answered, max_files=10).run_once() == len(first)
        assert [(s.batch_id, s.message_ids) for s in sent] == first
        sent.clear()
        assert await RuleRunner(pool, answered, max_files=10).run_once() == 0
        assert sent == []
        async with pool.acquire() as conn:
            listed = await rules.get(conn, rule.rule_id)
        assert listed is not None
        assert listed.files_started == sum(len(ids) for _, ids in first)
    finally:
        await pool.close()
