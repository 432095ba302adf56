"""The embedded nats-server lets in only tgdl's own logins, one per service, and the
gateway's may not publish jobs, events, outcomes or leases."""

from __future__ import annotations

import json
import stat

import nats
import pytest
from nats.errors import NoServersError
from waiting import until

from tgdl.bus import topology
from tgdl.contracts.config import CommonSettings
from tgdl.launcher.embedded import start_nats
from tgdl.launcher.plan import Home
from tgdl.launcher.servers import nats_users, with_login


@pytest.fixture
def server(tmp_path):
    home = Home(tmp_path / "home")
    users = nats_users(home, "tgdl")
    nats_server = start_nats(home.nats, users=users, max_store="1GB")
    yield nats_server, {u.name: with_login(nats_server.url, u) for u in users}, home
    nats_server.stop()


async def test_a_client_without_a_login_is_refused(server):
    embedded, _, home = server
    with pytest.raises((NoServersError, nats.errors.Error, OSError)):
        await nats.connect(embedded.url, max_reconnect_attempts=0, connect_timeout=2,
                           allow_reconnect=False)
    for secret in (home.nats / "users.json", home.nats / "nats.conf"):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert set(json.loads((home.nats / "users.json").read_text())) == {
        "tgdl", "gateway", "orchestrator", "projector", "downloader", "catalog"}


async def test_the_gateway_cannot_publish_a_job_but_the_orchestrator_can(server):
    _, logins, _ = server
    settings = CommonSettings(nats_url=logins["tgdl"])
    names = settings.names
    admin = await nats.connect(logins["tgdl"])
    await topology.ensure_topology(admin.jetstream(), names, topology.QueuePolicy.of(settings))
    await admin.drain()

    violations: list[str] = []

    async def on_error(exc: Exception) -> None:
        violations.append(str(exc))
    gateway = await nats.connect(logins["gateway"], error_cb=on_error)
    orchestrator = await nats.connect(logins["orchestrator"])
    try:
        await gateway.publish(names.download_jobs, b"{}")
        await gateway.flush()
        await until(lambda: any("ermissions" in v for v in violations), 5,
                    what="a permissions violation")
        # nor a batch's status snapshot, which every event stream of that batch relays
        await gateway.publish(names.batch_progress("b"), b"{}")
        await gateway.flush()
        await until(lambda: any(names.batch_progress("b") in v for v in violations), 5,
                    what="a permissions violation on the snapshot")
        js = orchestrator.jetstream()
        await js.publish(names.download_jobs, b"{}", stream=names.jobs_stream)
        info = await js.stream_info(names.jobs_stream)
        assert info.state.messages == 1  # only the orchestrator's
        # what the gateway does do: ask the orchestrator, read streams
        assert (await gateway.jetstream().stream_info(names.jobs_stream)).state.messages == 1
    finally:
        await gateway.drain()
        await orchestrator.drain()
