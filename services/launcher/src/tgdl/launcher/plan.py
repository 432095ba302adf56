"""What `tgdl run` decides before it starts anything: pure functions over the environment,
so every choice (ports, Telegram source, each child's command and environment) is
unit-tested without processes."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings

from tgdl.contracts.catalog import CatalogEntry
from tgdl.contracts.config import settings_problems
from tgdl.gateway.security import is_loopback, parse_limited, parse_tokens
from tgdl.launcher.supervisor import ChildSpec

NATS_PREFERRED_PORT = 4222
HTTP_DEFAULT_HOST = "127.0.0.1"
HTTP_DEFAULT_PORT = 8000
METRICS_DEFAULT_HOST = "127.0.0.1"  # as tgdl.runtime.metrics
DEFAULT_DOWNLOADERS = 2
S = TypeVar("S", bound=BaseSettings)
SERVICES = ("gateway", "orchestrator", "projector", "catalog")
SIMULATOR = "simtelegram"


class ConfigError(ValueError):
    """The environment asks for something that cannot work; the message says what to fix."""


class BadSettings(ConfigError):
    """TGDL_* values a settings class refuses, one problem per variable."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def settings_from(cls: type[S], env: Mapping[str, str], **overrides: Any) -> S:
    """`cls` read from `env` (not only from the process environment), then `overrides`.
    Raises ConfigError naming each variable that cannot work."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    upper = {key.upper(): value for key, value in env.items()}
    values: dict[str, Any] = {
        name: upper[key] for name in cls.model_fields
        if (key := f"{prefix}{name}".upper()) in upper
    }
    try:
        return cls(**{**values, **overrides})
    except ValidationError as exc:
        raise BadSettings(settings_problems(exc, cls)) from None


def check_service_settings(env: Mapping[str, str], simulated: bool) -> None:
    """Every service's settings as its process will read them: a bad TGDL_* stops
    `tgdl run` before anything starts, instead of a service failing at every restart."""
    from tgdl.catalog.settings import CatalogSettings
    from tgdl.downloader.settings import DownloaderSettings
    from tgdl.gateway.settings import GatewaySettings
    from tgdl.orchestrator.settings import OrchestratorSettings
    from tgdl.projector.settings import ProjectorSettings
    from tgdl.simtelegram.settings import SimSettings

    classes: list[type[BaseSettings]] = [GatewaySettings, OrchestratorSettings,
                                         ProjectorSettings, CatalogSettings,
                                         DownloaderSettings]
    problems: dict[str, None] = {}  # a shared setting's problem once, not per service
    for cls in [*classes, SimSettings] if simulated else classes:
        try:
            settings_from(cls, env)
        except BadSettings as exc:
            problems.update(dict.fromkeys(exc.problems))
    if problems:
        raise BadSettings(list(problems))


# --- the data folder ---------------------------------------------------------------------


@dataclass(frozen=True)
class Home:
    """The data folder (TGDL_HOME, default ./.tgdl), kept between runs."""

    root: Path

    @classmethod
    def from_env(cls, env: Mapping[str, str], cwd: Path) -> Home:
        return cls((cwd / env.get("TGDL_HOME", ".tgdl")).resolve())

    @property
    def nats(self) -> Path:
        return self.root / "nats"

    @property
    def postgres(self) -> Path:
        return self.root / "pg"

    @property
    def lock(self) -> Path:
        return self.root / "run.lock"

    @property
    def metrics_targets(self) -> Path:
        """Every process's /metrics while `tgdl run` runs (Prometheus file_sd_configs)."""
        return self.root / "metrics-targets.json"

    @property
    def gateway(self) -> Path:
        """The gateway's URL (and the pid of the `tgdl run` serving it) while it runs:
        `tgdl download`, `status`, ... find it there when it could not have the default
        port."""
        return self.root / "gateway.json"

    @property
    def instance(self) -> Path:
        """Where a running `tgdl run` tells other commands which servers it uses."""
        return self.root / "instance.json"

    def session_file(self, env: Mapping[str, str], cwd: Path) -> Path:
        explicit = env.get("TGDL_SESSION_FILE")
        return (cwd / explicit).resolve() if explicit else self.root / "telegram.session"


# --- ports -------------------------------------------------------------------------------


def pick_port(
    preferred: int,
    explicit: bool,
    is_free: Callable[[int], bool],
    any_free: Callable[[], int],
    what: str,
    variable: str,
) -> int:
    """The preferred port if free; any free port otherwise, unless the user asked for
    exactly that one (then a busy port is an error they must resolve)."""
    if is_free(preferred):
        return preferred
    if explicit:
        raise ConfigError(f"port {preferred} for {what} is in use; choose another with {variable}")
    return any_free()


def http_address(
    env: Mapping[str, str], is_free: Callable[[int], bool], any_free: Callable[[], int]
) -> tuple[str, int]:
    host = env.get("TGDL_HTTP_HOST", HTTP_DEFAULT_HOST)
    refuse_anonymous_exposure(env, host)
    raw = env.get("TGDL_HTTP_PORT")
    try:
        preferred = int(raw) if raw else HTTP_DEFAULT_PORT
    except ValueError:
        raise ConfigError(f"TGDL_HTTP_PORT must be a port number, not {raw!r}") from None
    port = pick_port(preferred, bool(raw), is_free, any_free, "the HTTP API", "TGDL_HTTP_PORT")
    return host, port


def refuse_anonymous_exposure(env: Mapping[str, str], host: str) -> None:
    """Listening beyond this machine without a token would hand the account and every
    downloaded file to whoever reaches the port."""
    try:
        tokens = parse_tokens(env.get("TGDL_API_TOKEN", "")) + parse_limited(
            env.get("TGDL_API_TOKENS", ""))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if tokens or is_loopback(host) or env.get("TGDL_ALLOW_ANONYMOUS") == "1":
        return
    raise ConfigError(
        f"TGDL_HTTP_HOST={host} listens beyond this machine, and no TGDL_API_TOKEN is set: "
        "set a token (clients send it as Authorization: Bearer), or TGDL_ALLOW_ANONYMOUS=1 "
        "if something else guards the port")


def browser_url(host: str, port: int) -> str:
    """Where a person on this machine reaches a server listening on host:port."""
    reachable = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    if ":" in reachable:
        reachable = f"[{reachable}]"
    return f"http://{reachable}:{port}"


def metered_processes(downloaders: int) -> list[str]:
    """The processes with a metrics port of their own, in the order of TGDL_METRICS_PORT's
    consecutive ports (the gateway serves /metrics on its HTTP port)."""
    return ["orchestrator", "projector", "catalog",
            *(f"downloader-{i}" for i in range(1, downloaders + 1))]


def metrics_ports(
    env: Mapping[str, str], downloaders: int, is_free: Callable[[int], bool],
    any_free: Callable[[], int],
) -> dict[str, int]:
    """A metrics port per process: TGDL_METRICS_PORT=P gives the orchestrator P, the
    projector P+1, the catalog P+2 and downloader-i P+2+i (each must be free); unset, each
    a free port."""
    names = metered_processes(downloaders)
    raw = env.get("TGDL_METRICS_PORT", "").strip()
    if not raw:
        ports: dict[str, int] = {}
        while len(ports) < len(names):  # distinct, should the system hand one out twice
            port = any_free()
            if port not in ports.values():
                ports[names[len(ports)]] = port
        return ports
    try:
        base = int(raw)
    except ValueError:
        raise ConfigError(f"TGDL_METRICS_PORT must be a port number, not {raw!r}") from None
    if not 1 <= base <= 65536 - len(names):
        raise ConfigError(f"TGDL_METRICS_PORT={base} leaves no room for {len(names)} "
                          f"consecutive ports ({', '.join(names)})")
    ports = {name: base + i for i, name in enumerate(names)}
    for name, port in ports.items():
        if not is_free(port):
            raise ConfigError(f"port {port} for the metrics of {name} is in use; "
                              f"TGDL_METRICS_PORT={base} takes {base}-{base + len(names) - 1} "
                              "(orchestrator, projector, catalog, downloader-1..N): choose another "
                              "base")
    return ports


def metrics_targets(http: tuple[str, int], metrics_host: str,
                    ports: Mapping[str, int]) -> list[dict[str, Any]]:
    """Every process's /metrics, as Prometheus' file_sd_configs reads them (one target
    group per process, labelled with its service and replica)."""
    def group(address: str, replica: str) -> dict[str, Any]:
        return {"targets": [address], "labels": {
            "service": replica.split("-")[0], "replica": replica}}

    def address(host: str, port: int) -> str:
        return browser_url(host, port).removeprefix("http://")

    return [group(address(*http), "gateway"),
            *(group(address(metrics_host, port), name) for name, port in ports.items())]


def metrics_banner(targets: Sequence[Mapping[str, Any]], listed_in: Path) -> list[str]:
    """Where each process's metrics are, for the user."""
    return [f"Metrics for Prometheus (listed in {listed_in}):",
            *(f"  {t['labels']['replica']}: http://{t['targets'][0]}/metrics" for t in targets)]


def downloader_count(env: Mapping[str, str]) -> int:
    raw = env.get("TGDL_DOWNLOADERS", str(DEFAULT_DOWNLOADERS))
    try:
        count = int(raw)
    except ValueError:
        raise ConfigError(f"TGDL_DOWNLOADERS must be a whole number, not {raw!r}") from None
    if count < 1:
        raise ConfigError("TGDL_DOWNLOADERS must be at least 1: someone has to download")
    return count


# --- Telegram source ---------------------------------------------------------------------


class Source(StrEnum):
    sim = "sim"
    telethon = "telethon"


@dataclass(frozen=True)
class TelegramChoice:
    source: Source
    reason: str  # one sentence for the user


def choose_telegram(env: Mapping[str, str], session_exists: bool) -> TelegramChoice:
    """A real account when it is fully configured and logged in; the simulated Telegram
    otherwise. TGDL_TELEGRAM forces either."""
    has_credentials = bool(env.get("TGDL_API_ID")) and bool(env.get("TGDL_API_HASH"))
    forced = env.get("TGDL_TELEGRAM", "").strip().lower()
    if forced not in ("", *Source):
        raise ConfigError(f"TGDL_TELEGRAM must be 'sim' or 'telethon', not {forced!r}")
    if forced == Source.sim:
        return TelegramChoice(Source.sim, "TGDL_TELEGRAM=sim")
    if has_credentials and session_exists:
        return TelegramChoice(Source.telethon, "TGDL_API_ID, TGDL_API_HASH and a session")
    if forced == Source.telethon:
        missing = "TGDL_API_ID and TGDL_API_HASH" if not has_credentials else "a session"
        raise ConfigError(
            f"TGDL_TELEGRAM=telethon needs {missing}; set them and run `tgdl login` first"
        )
    if has_credentials:
        return TelegramChoice(Source.sim, "no session yet: run `tgdl login`")
    return TelegramChoice(Source.sim, "no Telegram account configured")


# --- children ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Wiring:
    """Everything the services must agree on, resolved by the launcher."""

    nats_url: str
    database_url: str
    source: Source
    sim_url: str | None
    http_host: str
    http_port: int
    session_file: Path
    # A NATS login per service (service -> URL), when the server requires them.
    service_nats_urls: Mapping[str, str] = field(default_factory=dict)
    # Each process's own metrics port (process name -> port), from `metrics_ports`.
    metrics_ports: Mapping[str, int] = field(default_factory=dict)


def service_env(base: Mapping[str, str], wiring: Wiring) -> dict[str, str]:
    """The environment every service process gets: the user's own TGDL_* settings plus
    the servers and sources the launcher resolved."""
    env = dict(base)
    env.update(
        TGDL_NATS_URL=wiring.nats_url,
        TGDL_DATABASE_URL=wiring.database_url,
        TGDL_TELEGRAM=wiring.source.value,
        TGDL_HTTP_HOST=wiring.http_host,
        TGDL_HTTP_PORT=str(wiring.http_port),
        TGDL_SESSION_FILE=str(wiring.session_file),
        PYTHONUNBUFFERED="1",  # lines reach the prefixed output as they are written
    )
    if wiring.sim_url:
        env["TGDL_SIM_URL"] = wiring.sim_url
    return env


# Which services may see each secret of the user's environment (or the launcher's: the
# database URL holds the services' PostgreSQL password; downloaders never use it).
SECRETS: dict[str, tuple[str, ...]] = {
    "TGDL_API_ID": ("downloader", "catalog"), "TGDL_API_HASH": ("downloader", "catalog"),
    "TGDL_API_TOKEN": ("gateway",), "TGDL_API_TOKENS": ("gateway",),
    "TGDL_DATABASE_URL": ("gateway", "orchestrator", "projector", "catalog"),
}


def module_command(service: str, python: str = sys.executable) -> list[str]:
    return [python, "-m", f"tgdl.{service}"]


def service_specs(
    base: Mapping[str, str], wiring: Wiring, downloaders: int, python: str = sys.executable
) -> list[ChildSpec]:
    """gateway, orchestrator, projector, catalog and `downloaders` replicas named
    downloader-1..N."""
    env = service_env(base, wiring)

    def own(service: str) -> dict[str, str]:
        """A service's environment holds only its own secrets: the Telegram
        application's for downloaders, the API tokens for the gateway, the database login
        for those that use it, its NATS login."""
        mine = {k: v for k, v in env.items()
                if k not in SECRETS or service in SECRETS[k]}
        url = wiring.service_nats_urls.get(service)
        return {**mine, "TGDL_NATS_URL": url} if url else mine
    def metered(process: str, child_env: dict[str, str]) -> dict[str, str]:
        """Its own metrics port, or none: several processes never want the same one."""
        child_env.pop("TGDL_METRICS_PORT", None)
        if process in wiring.metrics_ports:
            child_env["TGDL_METRICS_PORT"] = str(wiring.metrics_ports[process])
        return child_env

    specs = [ChildSpec(name, module_command(name, python), metered(name, own(name)))
             for name in SERVICES]
    for i in range(1, downloaders + 1):
        replica = f"downloader-{i}"
        replica_env = metered(replica, {**own("downloader"), "TGDL_REPLICA": replica})
        specs.append(ChildSpec(replica, module_command("downloader", python), replica_env))
    return specs


def simulator_spec(
    base: Mapping[str, str], port: int, python: str = sys.executable
) -> ChildSpec:
    env = {**{k: v for k, v in base.items() if k != "TGDL_METRICS_PORT"},
           "TGDL_SIM_HOST": "127.0.0.1", "TGDL_SIM_PORT": str(port), "PYTHONUNBUFFERED": "1"}
    return ChildSpec(SIMULATOR, module_command(SIMULATOR, python), env)


def simulator_url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


# --- what to tell the user ---------------------------------------------------------------


def example_ids(entries: Iterable[CatalogEntry], count: int = 5) -> list[int]:
    """A few ids that can actually be downloaded, for the curl example."""
    ids = sorted(e.message_id for e in entries if e.media_kind is not None)
    return ids[:count] or list(range(1, count + 1))


def ready_banner(base_url: str, ids: Sequence[int]) -> list[str]:
    body = '{"message_ids": [' + ", ".join(map(str, ids)) + '], "max_concurrent": 3}'
    return [
        f"tgdl is ready: open {base_url}/",
        f"API docs: {base_url}/docs",
        "Try it from a shell:",
        f"  curl -s -X POST {base_url}/api/media/batch-download \\",
        f"       -H 'content-type: application/json' -d '{body}'",
        f"  curl -s {base_url}/api/media/batch-status/<batch_id from the answer above>",
        "Press Ctrl-C to stop.",
    ]
