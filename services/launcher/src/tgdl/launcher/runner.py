"""`tgdl run`: the whole system in the foreground, one OS process per service.

Order of things: servers (embedded unless given), schema and NATS topology, the Telegram
source (simulated unless an account is logged in), then the services under supervision.
The first Ctrl-C (or SIGTERM) stops everything cleanly, a second one kills the children.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import httpx
from pydantic import ValidationError

from tgdl.contracts.config import CommonSettings
from tgdl.launcher.console import Output
from tgdl.launcher.embedded import free_port
from tgdl.launcher.lifeline import become_subreaper
from tgdl.launcher.plan import (
    METRICS_DEFAULT_HOST,
    SIMULATOR,
    ConfigError,
    Home,
    Source,
    Wiring,
    browser_url,
    check_service_settings,
    choose_telegram,
    downloader_count,
    example_ids,
    http_address,
    metrics_banner,
    metrics_ports,
    metrics_targets,
    ready_banner,
    service_specs,
    settings_from,
    simulator_spec,
    simulator_url,
)
from tgdl.launcher.prepare import media_examples, prepare, seed_from_simulator
from tgdl.launcher.servers import HomeBusy, port_is_free, servers_for
from tgdl.launcher.supervisor import Supervisor

SIMULATOR_START_TIMEOUT = 30.0
GATEWAY_PATIENCE = 30.0  # then remind the user what we are waiting for
CHILD_STOP_TIMEOUT = 10.0


class StopRequest:
    """Ctrl-C and SIGTERM as an event; a repeated signal calls `on_repeat`."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, say: Callable[[str], None]) -> None:
        self._event = asyncio.Event()
        self._say = say
        self.on_repeat: Callable[[], None] | None = None

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in self.SIGNALS:
            loop.add_signal_handler(sig, self._signalled)

    def uninstall(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in self.SIGNALS:
            loop.remove_signal_handler(sig)

    def _signalled(self) -> None:
        if not self._event.is_set():
            self._event.set()  # first: saying so must not be what a stop depends on
            self._say("Stopping (press Ctrl-C again to kill the services at once)")
        elif self.on_repeat is not None:
            self._say("Killing the services now")
            self.on_repeat()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    async def wait(self, within: float | None = None) -> bool:
        """True once a stop was requested; False if `within` seconds passed first."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), within)
        return self._event.is_set()


async def wait_until_healthy(
    url: str, stop: StopRequest, within: float | None = None,
    on_slow: Callable[[], None] | None = None,
) -> bool:
    """Poll `url` until it answers 200. False if a stop came first or `within` seconds
    passed."""
    started = time.monotonic()
    reminded = started
    async with httpx.AsyncClient(timeout=2.0) as client:
        while not stop.requested:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return True
            now = time.monotonic()
            if within is not None and now - started > within:
                return False
            if on_slow is not None and now - reminded > GATEWAY_PATIENCE:
                reminded = now
                on_slow()
            await stop.wait(0.2)
    return False


async def start_simulator(
    supervisor: Supervisor, env: Mapping[str, str], stop: StopRequest
) -> str | None:
    """Run the simulated Telegram under supervision; its URL once it answers."""
    port = free_port()
    await supervisor.start(simulator_spec(env, port))
    url = simulator_url(port)
    if await wait_until_healthy(f"{url}/healthz", stop, SIMULATOR_START_TIMEOUT):
        return url
    if not stop.requested:
        raise RuntimeError(f"the simulated Telegram did not answer on {url}/healthz "
                           f"within {SIMULATOR_START_TIMEOUT:g} s; see its output above")
    return None


async def run(env: Mapping[str, str], cwd: Path, out: Output) -> int:
    try:
        home = Home.from_env(env, cwd)
        downloaders = downloader_count(env)
        session_file = home.session_file(env, cwd)
        choice = choose_telegram(env, session_file.exists())
        http_host, http_port = http_address(env, port_is_free, free_port)
        metrics_host = env.get("TGDL_METRICS_HOST", METRICS_DEFAULT_HOST)
        metered = metrics_ports(env, downloaders,
                                lambda port: port_is_free(port, metrics_host), free_port)
        check_service_settings(env, simulated=choice.source == Source.sim)
    except (ConfigError, ValidationError) as exc:
        out.say(f"Cannot start: {exc}")
        return 2

    stop = StopRequest(out.say)
    stop.install()
    become_subreaper()  # so a killed embedded PostgreSQL can be reaped and restarted
    try:
        async with servers_for(home, env, out.say, owner=True) as endpoints:
            if stop.requested:
                return 0
            settings = settings_from(CommonSettings, env, nats_url=endpoints.nats_url,
                                     database_url=endpoints.database_url)
            version = await prepare(settings)
            out.say(f"Database schema {settings.db_schema!r} at version {version}; "
                    f"NATS streams ready under the prefix {settings.namespace!r}")
            supervisor = Supervisor(out, stop_timeout=CHILD_STOP_TIMEOUT)
            stop.on_repeat = supervisor.kill
            try:
                await _run_services(env, settings, choice.source, session_file,
                                    (http_host, http_port), downloaders, supervisor, stop, out,
                                    endpoints.service_nats_urls, home,
                                    (metrics_host, metered))
            finally:
                # The services first, while what they talk to is still there.
                await supervisor.stop(n for n in supervisor.names() if n != SIMULATOR)
                await supervisor.stop()
    except (HomeBusy, RuntimeError, OSError) as exc:
        out.say(f"Cannot run: {exc}")
        return 1
    finally:
        stop.uninstall()
    out.say("Stopped")
    return 0


async def _run_services(
    env: Mapping[str, str],
    settings: CommonSettings,
    source: Source,
    session_file: Path,
    http: tuple[str, int],
    downloaders: int,
    supervisor: Supervisor,
    stop: StopRequest,
    out: Output,
    service_nats_urls: Mapping[str, str],
    home: Home,
    metered: tuple[str, Mapping[str, int]],
) -> None:
    sim_url: str | None = None
    if source is Source.sim:
        sim_url = env.get("TGDL_SIM_URL") or await start_simulator(supervisor, env, stop)
        if sim_url is None:
            return  # stopped while the simulator was starting
        entries = await seed_from_simulator(sim_url, settings)
        out.say(f"Using the simulated Telegram ({len(entries)} messages); "
                "run `tgdl login` to use your account")
    else:
        out.say(f"Using your Telegram account (session {session_file}); "
                "run `tgdl sync <chat>` to list a chat's messages")

    wiring = Wiring(
        nats_url=settings.nats_url, database_url=settings.database_url, source=source,
        sim_url=sim_url, http_host=http[0], http_port=http[1], session_file=session_file,
        service_nats_urls=service_nats_urls, metrics_ports=metered[1],
    )
    for spec in service_specs(env, wiring, downloaders):
        await supervisor.start(spec)
    # Where Prometheus finds every process, for as long as they run.
    targets = metrics_targets(http, *metered)
    home.metrics_targets.write_text(json.dumps(targets, indent=2) + "\n")
    base_url = browser_url(*http)
    home.gateway.write_text(json.dumps({"url": base_url, "pid": os.getpid()}) + "\n")
    try:
        healthy = await wait_until_healthy(
            f"{base_url}/healthz", stop,
            on_slow=lambda: out.say(f"Still waiting for the gateway on {base_url}/healthz"),
        )
        if healthy:
            examples = example_ids(await media_examples(settings))
            for line in [*ready_banner(base_url, examples),
                         *metrics_banner(targets, home.metrics_targets)]:
                out.say(line)
        await stop.wait()
    finally:
        home.metrics_targets.unlink(missing_ok=True)
        home.gateway.unlink(missing_ok=True)
