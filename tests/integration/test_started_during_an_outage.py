"""A service started while PostgreSQL is down waits for it (one line) instead of crashing
into the supervisor's growing back-off; it goes on as soon as the database is back, and a
stop while it waits is a clean exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from waiting import until

from tgdl.bus.topology import QueuePolicy, ensure_topology
from tgdl.contracts.subjects import Names
from tgdl.db.schema import migrate_database
from tgdl.launcher.embedded import start_postgres


def spawn(module: str, env: dict[str, str], log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", module], env={**os.environ, **env},
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)


async def test_the_projector_waits_for_the_database_then_projects(servers, isolation,
                                                                  tmp_path, nc):
    pg = start_postgres(tmp_path / "pg")
    env = {**isolation.env(servers), "TGDL_DATABASE_URL": pg.url}
    await migrate_database(pg.url, isolation.schema)
    await ensure_topology(nc.jetstream(), Names(isolation.namespace), QueuePolicy())
    pg.stop()
    log = tmp_path / "projector.log"
    with log.open("wb") as out:
        first = spawn("tgdl.projector", env, out)
        second = spawn("tgdl.projector", env, out)
    try:
        await until(lambda: log.read_text().count("PostgreSQL is unreachable") == 2, 20,
                    what="both saying they wait")
        assert first.poll() is None and second.poll() is None
        second.send_signal(signal.SIGTERM)  # a stop while waiting: a clean exit
        await until(lambda: second.poll() is not None, 10, what="the waiting one stopped")
        assert second.returncode == 0, log.read_text()

        pg = start_postgres(tmp_path / "pg")
        await until(lambda: "projecting from positions" in log.read_text(), 20,
                    what="projecting once the database is back")
        assert first.poll() is None
        assert "PostgreSQL is reachable" in log.read_text()
        assert "Traceback" not in log.read_text()
    finally:
        for p in (first, second):
            if p.poll() is None:
                p.terminate()
                p.wait(10)
        pg.stop()


async def test_a_gateway_waiting_for_the_database_stops_cleanly_on_sigterm(tmp_path):
    from tgdl.launcher.embedded import free_port

    env = {"TGDL_HTTP_PORT": str(free_port()),
           "TGDL_DATABASE_URL": f"postgresql://nobody@127.0.0.1:{free_port()}/none"}
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        gateway = spawn("tgdl.gateway", env, out)
    try:
        await until(lambda: "PostgreSQL is unreachable" in log.read_text(), 20,
                    what="the gateway saying it waits")
        gateway.send_signal(signal.SIGTERM)
        await until(lambda: gateway.poll() is not None, 10, what="the waiting gateway stopped")
        assert gateway.returncode == 0, log.read_text()
        assert "Traceback" not in log.read_text()
    finally:
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait(10)
