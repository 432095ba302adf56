"""The monitoring files, checked without Docker: the compose override mounts files that
exist, Prometheus scrapes the gateway where the compose file publishes it, and every
metric the Grafana dashboard queries is one a real gateway or a service's own metrics port
serves (tests/e2e/test_domain_metrics.py scrapes them from running processes)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import yaml
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tgdl.gateway.app import create_app
from tgdl.gateway.settings import GatewaySettings
from tgdl.launcher.prepare import prepare

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy/grafana/dashboards/tgdl.json"


def load(path: str):
    return yaml.safe_load((ROOT / path).read_text())


def test_the_override_mounts_files_that_exist():
    services = load("docker-compose.monitoring.yml")["services"]
    assert {"prometheus", "grafana"} <= services.keys()
    for name, service in services.items():
        if name not in ("prometheus", "grafana"):
            continue  # the tgdl services only get settings added
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
    grafana_env = services["grafana"]["environment"]
    home = grafana_env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == "/var/lib/grafana/dashboards/" + DASHBOARD.name


def test_prometheus_scrapes_every_service_where_compose_runs_it():
    jobs = {j["job_name"]: j for j in load("deploy/prometheus/prometheus.yml")["scrape_configs"]}
    compose = load("docker-compose.yml")["services"]
    override = load("docker-compose.monitoring.yml")["services"]
    [target] = jobs["tgdl-gateway"]["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert compose[host]["environment"]["TGDL_HTTP_PORT"] == port
    assert jobs["tgdl-gateway"]["metrics_path"] == "/metrics"
    targets = [t.split(":") for t in jobs["tgdl-services"]["static_configs"][0]["targets"]]
    [downloaders] = jobs["tgdl-downloaders"]["dns_sd_configs"]
    targets += [[name, str(downloaders["port"])] for name in downloaders["names"]]
    assert {name for name, _ in targets} == {"orchestrator", "projector", "catalog",
                                             "downloader"}
    for name, port in targets:
        assert name in compose
        env = override[name]["environment"]
        assert (env["TGDL_METRICS_PORT"], env["TGDL_METRICS_HOST"]) == (port, "0.0.0.0")


def test_the_dashboard_uses_the_provisioned_datasource():
    [source] = load("deploy/grafana/provisioning/datasources/prometheus.yml")["datasources"]
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["panels"]
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
        assert panel["targets"], panel["title"]


def served_names(text: str) -> set[str]:
    """Every sample name `text` serves or declares: a labelled family with no sample yet
    (no failures, no open batch) is still declared, with its suffixes."""
    families = list(text_string_to_metric_families(text))
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
    return ({s.name for f in families for s in f.samples} | {f.name for f in families}
            | {f.name + end for f in families for end in suffixes.get(f.type, ())})


def dashboard_metrics() -> set[str]:
    return {name for panel in json.loads(DASHBOARD.read_text())["panels"]
            for target in panel["targets"]
            for name in re.findall(r"\btgdl_[a-z_]+", target["expr"])}


async def test_every_metric_on_the_dashboard_is_served(servers, isolation):
    settings = GatewaySettings(nats_url=servers.nats_url, database_url=servers.database_url,
                               namespace=isolation.namespace, db_schema=isolation.schema,
                               media_root=isolation.media_root)
    await prepare(settings)
    app = create_app(settings)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://localhost") as client:
        await client.get("/api/messages")  # so the latency histogram has a sample
        text = (await client.get("/metrics")).text
    # What the other services' processes serve on their metrics ports: the default
    # registry of their entry modules (`run_service` serves it).
    import tgdl.downloader.app
    import tgdl.orchestrator.app
    import tgdl.projector.app  # noqa: F401
    served = served_names(text) | served_names(generate_latest(REGISTRY).decode())
    queried = dashboard_metrics()
    assert {"tgdl_downloader_bytes_total", "tgdl_orchestrator_permits_in_use",
            "tgdl_projector_lag_messages"} <= queried
    assert queried and not queried - served, f"not served: {sorted(queried - served)}"
