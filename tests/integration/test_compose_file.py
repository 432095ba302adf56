"""docker-compose.yml and the Dockerfile, checked statically (no Docker here): the
services exist, the downloader scales, the media volume is shared, every command names a
module that `python -m` can really run, and the services' database role (made by the
PostgreSQL init script, run here on a real cluster) is no superuser."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("gateway", "orchestrator", "projector", "catalog", "downloader", "simtelegram")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def runnable_module(name: str) -> bool:
    """True if `python -m name` would run something."""
    spec = importlib.util.find_spec(name)
    if spec is None:
        return False
    if spec.submodule_search_locations is not None:  # a package runs its __main__
        return importlib.util.find_spec(f"{name}.__main__") is not None
    return True


def module_of(command: list[str]) -> str:
    assert command[:2] == ["python", "-m"], f"not a `python -m` command: {command}"
    return command[2]


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """volume name -> path in the container"""
    pairs = (v.split(":")[:2] for v in service.get("volumes", []))
    return {source: target for source, target in pairs}


def test_the_servers_are_the_official_images(compose: dict[str, Any]) -> None:
    nats, postgres = compose["services"]["nats"], compose["services"]["postgres"]
    assert nats["image"].startswith("nats:2.10")
    assert nats["command"] == ["-c", "/etc/nats/nats.conf"]
    assert "jetstream {" in (ROOT / "deploy/nats/nats.conf").read_text()  # JetStream on
    assert mounts(nats)  # streams survive a restart
    assert postgres["image"] == "postgres:16"
    assert mounts(postgres)


@pytest.mark.parametrize("name", SERVICES)
def test_each_service_runs_its_own_module_from_the_one_image(
    compose: dict[str, Any], name: str
) -> None:
    service = compose["services"][name]
    assert service["build"] == "."
    assert module_of(service["command"]) == f"tgdl.{name}"


def test_every_command_is_a_real_module(compose: dict[str, Any]) -> None:
    commands = {name: s["command"] for name, s in compose["services"].items()
                if name not in ("nats", "postgres")}
    missing = [f"{name}: {module_of(cmd)}" for name, cmd in commands.items()
               if not runnable_module(module_of(cmd))]
    assert not missing, f"commands that `python -m` cannot run: {missing}"


def test_the_downloader_can_be_scaled(compose: dict[str, Any]) -> None:
    downloader = compose["services"]["downloader"]
    # Fixed names or host ports would make `--scale downloader=N` fail.
    assert "container_name" not in downloader
    assert "ports" not in downloader


def test_finished_files_live_on_one_shared_media_volume(compose: dict[str, Any]) -> None:
    services = compose["services"]
    media_root = services["downloader"]["environment"]["TGDL_MEDIA_ROOT"]
    volume = {source for source, target in mounts(services["downloader"]).items()
              if target == media_root}
    assert len(volume) == 1 and volume <= set(compose["volumes"])
    for reader in ("gateway", "orchestrator"):
        assert mounts(services[reader]).get(next(iter(volume))) == media_root
        assert services[reader]["environment"]["TGDL_MEDIA_ROOT"] == media_root
    # the orchestrator links a forward of a file already there at the start: it writes
    assert not any(v.endswith(":ro") for v in services["orchestrator"]["volumes"])
    assert all(v.endswith(":ro") for v in services["gateway"]["volumes"])


def test_services_share_the_servers_and_the_gateway_is_published(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    for name in SERVICES:
        env = services[name]["environment"]
        user = {"simtelegram": "tgdl"}.get(name, name)  # each service logs in as itself
        assert re.fullmatch(rf"nats://{user}:\$\{{TGDL_NATS_\w*PASSWORD:\?[^}}]+\}}@nats:4222",
                            env["TGDL_NATS_URL"]), env["TGDL_NATS_URL"]
    gateway = services["gateway"]
    assert "8000:8000" in gateway["ports"]
    assert gateway["environment"]["TGDL_HTTP_HOST"] == "0.0.0.0"  # reachable from outside


def test_only_what_uses_the_database_logs_in_as_its_owner_role_no_superuser(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    superuser = services["postgres"]["environment"]["POSTGRES_USER"]
    for name in ("setup", "seed-demo", "gateway", "orchestrator", "projector", "catalog"):
        url = services[name]["environment"]["TGDL_DATABASE_URL"]
        login = re.fullmatch(r"postgresql://(\w+):\$\{TGDL_POSTGRES_PASSWORD:\?[^}]+\}"
                             r"@postgres:5432/tgdl", url)
        assert login and login[1] == "tgdl" != superuser, url
    for name in ("downloader", "simtelegram"):  # they never use the database
        assert "TGDL_DATABASE_URL" not in services[name]["environment"]
    # the role comes from the init script, mounted where the image runs it on a new volume
    assert mounts(services["postgres"])["./deploy/postgres/init-tgdl.sh"] == \
        "/docker-entrypoint-initdb.d/10-tgdl.sh"
    assert os.access(ROOT / "deploy/postgres/init-tgdl.sh", os.X_OK)
    assert services["postgres"]["environment"]["TGDL_POSTGRES_PASSWORD"].startswith(
        "${TGDL_POSTGRES_PASSWORD:?")


def test_the_init_script_makes_an_owner_role_that_is_no_superuser(tmp_path: Path):
    """Run as the postgres image runs it: on a fresh cluster, as the image's superuser
    over the local socket, with the variables compose gives the container."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
        import pgserver
        from pgserver._commands import POSTGRES_BIN_PATH

    (tmp_path / "pg").mkdir()
    server = pgserver.get_server(tmp_path / "pg", cleanup_mode="stop")
    script = ROOT / "deploy/postgres/init-tgdl.sh"
    try:
        socket = parse_qs(urlsplit(server.get_uri()).query)["host"][0]
        env = {**os.environ, "POSTGRES_USER": "postgres", "POSTGRES_DB": "postgres",
               "PGHOST": socket, "PATH": f"{POSTGRES_BIN_PATH}:{os.environ['PATH']}",
               "TGDL_POSTGRES_PASSWORD": "it's-$ecret"}
        run = subprocess.run(["sh", script], env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        query = subprocess.run(
            ["psql", "-U", "postgres", "-d", "postgres", "-At", "-c",
             "SELECT rolsuper, rolcreatedb, rolcreaterole, rolcanlogin,"
             " rolpassword LIKE 'SCRAM-SHA-256$%',"
             " (SELECT datdba::regrole::text FROM pg_database WHERE datname = 'tgdl')"
             " FROM pg_authid WHERE rolname = 'tgdl'"],
            env=env, capture_output=True, text=True, check=True)
        assert query.stdout.split() == ["f|f|f|t|t|tgdl"]  # owns its database, nothing more
        unset = {k: v for k, v in env.items() if k != "TGDL_POSTGRES_PASSWORD"}
        refused = subprocess.run(["sh", script], env=unset, capture_output=True, text=True)
        assert refused.returncode != 0 and "TGDL_POSTGRES_PASSWORD" in refused.stderr
    finally:
        server.cleanup()


def test_the_published_gateway_requires_a_token(compose: dict[str, Any]) -> None:
    # `${VAR:?message}`: compose refuses to start when the token is unset or empty
    token = compose["services"]["gateway"]["environment"]["TGDL_API_TOKEN"]
    assert token.startswith("${TGDL_API_TOKEN:?")


def test_the_schema_is_migrated_before_the_services_start(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["setup"]["command"][-1] == "migrate"
    for name in ("gateway", "orchestrator", "projector", "downloader"):
        assert services[name]["depends_on"]["setup"]["condition"] == (
            "service_completed_successfully"
        )


def test_the_image_installs_every_package_of_the_tree() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    packages = sorted(p.parent.relative_to(ROOT).as_posix()
                      for p in ROOT.glob("*/*/pyproject.toml"))
    assert packages, "no packages found"
    missing = [p for p in packages if f"./{p}" not in dockerfile]
    assert not missing, f"the Dockerfile does not install {missing}"


def test_secrets_come_from_the_environment_and_nats_requires_its_logins(
    compose: dict[str, Any],
) -> None:
    postgres = compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"]
    assert postgres.startswith("${TGDL_POSTGRES_SUPERUSER_PASSWORD:?")
    assert "tgdl:tgdl@" not in (ROOT / "docker-compose.yml").read_text()
    conf = ROOT / "deploy/nats/nats.conf"
    passwords = {v: "x" for v in compose["services"]["nats"]["environment"]}
    server = Path(sys.executable).parent / "nats-server"
    ok = subprocess.run([server, "-t", "-c", conf], env={**os.environ, **passwords},
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr  # a valid configuration...
    missing = subprocess.run([server, "-t", "-c", conf], capture_output=True, text=True,
                             env={k: v for k, v in os.environ.items()
                                  if not k.startswith("TGDL_NATS")})
    assert missing.returncode != 0  # ...that does not start without its passwords


def test_compose_gateway_rules_are_the_embedded_servers(tmp_path: Path) -> None:
    from tgdl.launcher.plan import Home
    from tgdl.launcher.servers import nats_users

    [gateway] = [u for u in nats_users(Home(tmp_path), "tgdl") if u.name == "gateway"]
    text = (ROOT / "deploy/nats/nats.conf").read_text()
    assert all(f'"{subject}"' in text for subject in gateway.deny_publish)
