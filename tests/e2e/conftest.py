"""The `stack` fixture: one full deployment per test (see e2e_stack.py)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from e2e_stack import SIM_ENV, Stack
from nats.errors import NoRespondersError
from waiting import until

from tgdl.contracts.config import CommonSettings
from tgdl.contracts.rules import DeleteRule
from tgdl.contracts.subjects import Names
from tgdl.db import catalog as catalog_db
from tgdl.db.connection import connect as db_connect
from tgdl.launcher.embedded import free_port
from tgdl.launcher.plan import settings_from
from tgdl.launcher.prepare import prepare
from tgdl.simtelegram import client as sim_client


async def _wait_ready(stack: Stack, nc, downloaders: int) -> None:
    async def until_up(predicate, what: str) -> None:
        async def up():  # a service that died while starting fails the setup at once
            if exited := stack.exited():
                raise RuntimeError(f"waiting for {what}: exited while starting: {exited}")
            return await predicate()
        await until(up, 40, what=what)

    async def gateway_up():
        with contextlib.suppress(httpx.HTTPError):
            return (await stack.http.get("/healthz")).status_code == 200
    await until_up(gateway_up, "gateway /healthz")

    last = {}

    async def orchestrator_up():
        r = await stack.http.post("/api/media/batch-cancel/probe_ready")
        last["answer"] = f"{r.status_code} {r.text[:300]}"
        return r.status_code == 404  # answered by the orchestrator, not "unavailable"
    try:
        await until_up(orchestrator_up, "orchestrator answering")
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}; the gateway's last answer: {last.get('answer')}") from None

    async def catalog_up():
        with contextlib.suppress(NoRespondersError, TimeoutError):
            body = DeleteRule(rule_id="rule_00000000").model_dump_json().encode()
            return await nc.request(stack.names.cmd_rule_delete, body, timeout=2)
    await until_up(catalog_up, "catalog service answering")

    js = nc.jetstream()

    async def downloaders_waiting():
        info = await js.consumer_info(stack.names.jobs_stream, stack.names.downloader_consumer)
        return info.num_waiting >= downloaders
    await until_up(downloaders_waiting, "downloaders pulling")


@pytest.fixture
async def stack(servers, isolation, tmp_path: Path, nc, request) -> AsyncIterator[Stack]:
    sim_port, http_port = free_port(), free_port()
    env = {
        **isolation.env(servers),
        **SIM_ENV,
        "TGDL_SIM_PORT": str(sim_port),
        "TGDL_SIM_URL": f"http://127.0.0.1:{sim_port}",
        "TGDL_HTTP_PORT": str(http_port),
        "TGDL_ACK_WAIT": "4",
        "TGDL_RETRY_BASE_DELAY": "0.2",
        "TGDL_GLOBAL_CAP": "8",
    }
    marker = request.node.get_closest_marker("stack")  # e.g. @pytest.mark.stack(global_cap=2)
    env.update({f"TGDL_{k.upper()}": str(v) for k, v in (marker.kwargs if marker else {}).items()})
    stack = Stack(env=env, workdir=tmp_path, media_root=isolation.media_root,
                  names=Names(isolation.namespace), database_url=servers.database_url,
                  schema=isolation.schema, sim_url=env["TGDL_SIM_URL"])
    downloaders = 2
    ready = False
    try:
        stack.spawn("simtelegram", "tgdl.simtelegram")
        await prepare(settings_from(CommonSettings, env))  # what `tgdl migrate` does
        conn = await db_connect(servers.database_url, isolation.schema)
        try:

            async def sim_catalog():
                with contextlib.suppress(httpx.HTTPError):
                    return await sim_client.fetch_catalog(stack.sim_url)
            await catalog_db.upsert(conn, await until(sim_catalog, 30, what="sim catalog"))
        finally:
            await conn.close()
        stack.spawn("orchestrator", "tgdl.orchestrator")
        stack.spawn("projector", "tgdl.projector")
        stack.spawn("catalog", "tgdl.catalog")
        for i in range(1, downloaders + 1):
            stack.spawn(f"downloader-{i}", "tgdl.downloader", TGDL_REPLICA=f"downloader-{i}")
        stack.spawn("gateway", "tgdl.gateway")
        token = env.get("TGDL_API_TOKEN")  # set by @pytest.mark.stack(api_token=...)
        stack.http = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{http_port}", timeout=20,
            headers={"Authorization": f"Bearer {token}"} if token else None)
        await _wait_ready(stack, nc, downloaders)
        ready = True
        yield stack
    finally:
        if stack.http:
            await stack.http.aclose()
        stack.stop_all()
        if not ready or request.node.stash.get(_failed_key, False):
            print(stack.logs())  # pytest shows it beside the failed setup or test


_failed_key = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    if rep.when == "call" and rep.failed:
        item.stash[_failed_key] = True
    return rep
