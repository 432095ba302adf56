"""Schemathesis over the gateway's OpenAPI document, over real HTTP, with the gateway,
the orchestrator, the projector and the catalog service (on a simulated Telegram) running
on real NATS and PostgreSQL: no request it can make gets a 5xx, and every answer matches
the document."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path

import uvicorn
from nats.errors import NoRespondersError
from sim_helpers import running_sim
from waiting import until

from tgdl.bus.topology import QueuePolicy, ensure_topology
from tgdl.catalog.app import serve as serve_catalog
from tgdl.catalog.settings import CatalogSettings
from tgdl.contracts.rules import DeleteRule
from tgdl.db.schema import migrate_database
from tgdl.gateway.app import create_app
from tgdl.gateway.settings import GatewaySettings
from tgdl.launcher.embedded import free_port
from tgdl.orchestrator.app import OrchestratorService
from tgdl.orchestrator.settings import OrchestratorSettings
from tgdl.projector.app import run as run_projector
from tgdl.projector.settings import ProjectorSettings

ST = Path(sys.executable).parent / "st"  # schemathesis, pinned in requirements.txt


async def test_no_request_gets_a_5xx_or_an_answer_outside_the_document(servers, isolation, nc,
                                                                      tmp_path):
    common = dict(nats_url=servers.nats_url, database_url=servers.database_url,
                  namespace=isolation.namespace, db_schema=isolation.schema,
                  media_root=isolation.media_root)
    await migrate_database(servers.database_url, isolation.schema)
    orchestrator_settings = OrchestratorSettings(**common)
    await ensure_topology(nc.jetstream(), orchestrator_settings.names,
                          QueuePolicy.of(orchestrator_settings))
    stop = asyncio.Event()
    orchestrator = OrchestratorService(orchestrator_settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(
        create_app(GatewaySettings(**common, http_port=port, command_timeout=3.0,
                                   projection_wait=0.2)),
        host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    sim = running_sim()
    sim_url = await sim.__aenter__()
    tasks = [asyncio.create_task(orchestrator.run(stop)),
             asyncio.create_task(run_projector(ProjectorSettings(**common), stop)),
             asyncio.create_task(serve_catalog(CatalogSettings(**common, sim_url=sim_url),
                                               stop)),
             asyncio.create_task(server.serve())]

    async def catalog_up():
        with contextlib.suppress(NoRespondersError, TimeoutError):
            body = DeleteRule(rule_id="rule_00000000").model_dump_json().encode()
            return await nc.request(orchestrator_settings.names.cmd_rule_delete, body, 2)

    try:
        await until(lambda: server.started and hasattr(orchestrator, "orch"), 20,
                    what="services ready")
        await until(catalog_up, 20, what="catalog service answering")
        # An event stream of a running batch never ends by itself (nothing downloads
        # here): read up to its first event (the status now, all a stream can send here),
        # or each stream the fuzzer opens would last the whole request timeout.
        config = tmp_path / "schemathesis.toml"
        config.write_text('[[operations]]\ninclude-path = "/api/media/batch-events/{batch_id}"\n'
                          "max-stream-events = 1\n")
        run = await asyncio.create_subprocess_exec(
            str(ST), "--config-file", str(config), "run",
            f"http://127.0.0.1:{port}/openapi.json",
            "--checks", "not_a_server_error,status_code_conformance,"
                        "content_type_conformance,response_schema_conformance",
            "--phases", "examples,coverage,fuzzing", "--max-examples", "50",
            "--seed", "9", "--no-color", "--request-timeout", "4",
            "--suppress-health-check", "all",
            cwd=tmp_path,  # its example database stays out of the tree
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(run.communicate(), 300)
        assert run.returncode == 0, out.decode(errors="replace")[-20000:]
    finally:
        server.should_exit = True
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.gather(*tasks)
        await sim.__aexit__(None, None, None)
