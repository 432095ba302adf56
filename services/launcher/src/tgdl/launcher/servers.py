"""NATS and PostgreSQL for a command: the ones the user named (TGDL_NATS_URL,
TGDL_DATABASE_URL), the ones a running `tgdl run` of the same data folder uses, or
embedded ones started from the data folder for as long as the command runs.

A lock file keeps two commands from starting servers over the same data; the running
`tgdl run` writes `instance.json` so other commands can join it instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import quote

from tgdl.contracts.subjects import Names
from tgdl.launcher.embedded import (
    EmbeddedNats,
    EmbeddedPostgres,
    NatsUser,
    free_port,
    start_nats,
    start_postgres,
)
from tgdl.launcher.plan import NATS_PREFERRED_PORT, Home, pick_port
from tgdl.launcher.supervisor import Backoff


@dataclass(frozen=True)
class Endpoints:
    nats_url: str
    database_url: str
    # Each service's own NATS login (service -> URL) when the embedded nats-server
    # requires one; empty: every service uses nats_url.
    service_nats_urls: dict[str, str] = field(default_factory=dict)


# --- NATS users of the embedded server ------------------------------------------------------

NATS_SERVICES = ("gateway", "orchestrator", "projector", "downloader", "catalog")


def nats_users(home: Home, namespace: str) -> list[NatsUser]:
    """One login per service and one for tgdl's own commands, with passwords made once and
    kept in the data folder (owner-only). The gateway, the part that faces the network,
    may send commands and read, never publish jobs, events, outcomes, progress or leases,
    nor change or purge streams."""
    path = home.nats / "users.json"
    try:
        passwords = json.loads(path.read_text())
    except (OSError, ValueError):
        passwords = {}
    names = Names(namespace)
    wanted = ("tgdl", *NATS_SERVICES)
    if not isinstance(passwords, dict) or set(passwords) != set(wanted):
        passwords = {user: secrets.token_urlsafe(24) for user in wanted}
        home.nats.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            json.dump(passwords, file)
    gateway_deny = (
        f"{names.prefix}.job.>", f"{names.prefix}.evt.>", f"{names.prefix}.file.>",
        f"{names.prefix}.batch.>",  # the projector's snapshots, relayed by event streams
        f"$KV.{names.leases_bucket}.>", f"$KV.{names.open_batches_bucket}.>",
        f"$KV.{names.flood_bucket}.>", f"$KV.{names.files_bucket}.>",
        "$JS.API.STREAM.CREATE.>", "$JS.API.STREAM.UPDATE.>",
        "$JS.API.STREAM.DELETE.>", "$JS.API.STREAM.PURGE.>", "$JS.API.STREAM.MSG.DELETE.>",
        "$JS.API.CONSUMER.DELETE.>")
    return [NatsUser(user, password, gateway_deny if user == "gateway" else ())
            for user, password in passwords.items()]


def with_login(url: str, user: NatsUser) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{quote(user.name, safe='')}:{quote(user.password, safe='')}@{rest}"


class HomeBusy(RuntimeError):
    """Another tgdl command already owns the data folder's servers."""


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


class HomeLock:
    """An exclusive lock on the data folder, released by the kernel if we die."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._file: IO[str] | None = None

    def try_acquire(self) -> bool:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        file = open(self._path, "a+")  # held open for the lock's lifetime
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.close()
            return False
        file.truncate(0)
        file.write(str(os.getpid()))
        file.flush()
        self._file = file
        return True

    def holder(self) -> str:
        try:
            return self._path.read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_instance(home: Home) -> Endpoints | None:
    try:
        data = json.loads(home.instance.read_text())
        return Endpoints(data["nats_url"], data["database_url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _start_embedded_nats(home: Home, users: list[NatsUser]) -> EmbeddedNats:
    port = pick_port(NATS_PREFERRED_PORT, False, port_is_free, free_port, "NATS", "")
    try:
        return start_nats(home.nats, port=port, sync_always=True, users=users)
    except RuntimeError:
        if port != NATS_PREFERRED_PORT:
            raise
        return start_nats(home.nats, port=free_port(), sync_always=True,
                          users=users)  # lost a race


@contextlib.asynccontextmanager
async def servers_for(
    home: Home, env: Mapping[str, str], say: Callable[[str], None], owner: bool = False,
    alone: Callable[[], None] | None = None,
) -> AsyncIterator[Endpoints]:
    """Yield the servers to use. `owner` is for `tgdl run`: it must hold the data folder
    for its whole life and tells other commands where its servers are. `alone` is called
    before an embedded nats-server is started, where no running service can answer: a
    command that then needs something of its own (credentials) raises there, before
    any server starts."""
    nats_url = env.get("TGDL_NATS_URL")
    database_url = env.get("TGDL_DATABASE_URL")
    if nats_url and database_url and not owner:
        yield Endpoints(nats_url, database_url)  # nothing of the data folder is needed
        return
    lock = HomeLock(home.lock)
    if not lock.try_acquire():
        running = read_instance(home)
        if owner or running is None:
            raise HomeBusy(
                f"another tgdl process (pid {lock.holder()}) is using {home.root}; "
                "stop it first, or set TGDL_HOME to another folder"
            )
        say(f"Using the servers of the `tgdl run` in {home.root} (pid {lock.holder()})")
        yield Endpoints(nats_url or running.nats_url, database_url or running.database_url)
        return

    nats: EmbeddedNats | None = None
    postgres: EmbeddedPostgres | None = None
    watching: asyncio.Task[None] | None = None
    service_urls: dict[str, str] = {}
    try:
        if not nats_url:
            if alone is not None:
                alone()
            # On this (the main) thread: nats-server is told to die with the thread that
            # started it (see lifeline), and pool threads come and go.
            users = nats_users(home, env.get("TGDL_NAMESPACE", "tgdl"))
            nats = _start_embedded_nats(home, users)
            logins = {u.name: with_login(nats.url, u) for u in users}
            nats_url = logins.pop("tgdl")
            service_urls = logins
            say(f"Started nats-server (JetStream) on {nats.url}, data in {home.nats}; "
                "every service logs in as itself")
        if not database_url:
            postgres = await asyncio.to_thread(start_postgres, home.postgres)
            database_url = postgres.url
            say(f"Started PostgreSQL, data in {home.postgres}; the services log in as "
                "their own role, with a password")
        endpoints = Endpoints(nats_url, database_url, service_urls)
        if owner:  # owner-only: it holds the NATS logins
            fd = os.open(home.instance, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as file:
                json.dump({**asdict(endpoints), "pid": os.getpid()}, file)
            watching = asyncio.create_task(watch_servers(nats, postgres, say))
        yield endpoints
    finally:
        if watching is not None:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching
        if owner:
            home.instance.unlink(missing_ok=True)
        if nats is not None:
            await asyncio.to_thread(nats.stop)
            say("Stopped nats-server")
        if postgres is not None:
            await asyncio.to_thread(postgres.stop)
            say("Stopped PostgreSQL")
        lock.release()


# --- keeping the embedded servers up -------------------------------------------------------

WATCH_INTERVAL = 0.25  # seconds between looks at the servers' processes
SERVER_BACKOFF = Backoff(first=0.25, limit=10.0, stable_after=30.0)


async def watch_servers(nats: EmbeddedNats | None, postgres: EmbeddedPostgres | None,
                        say: Callable[[str], None]) -> None:
    """Restart an embedded server that died, on the same port and data, with back-off;
    one line when it goes and one when it is back. The services reconnect by themselves
    (and answer 503 meanwhile)."""
    logging.getLogger("pgserver").setLevel(logging.CRITICAL)  # its errors are ours to say
    watched: list[tuple[str, Callable[[], bool], Callable[[], Awaitable[None]]]] = []
    if nats is not None:
        watched.append(("nats-server", nats.alive, lambda: _restart_nats(nats)))
    if postgres is not None:
        watched.append(("PostgreSQL", lambda: postgres.alive(),
                        lambda: asyncio.to_thread(postgres.restart)))
    if not watched:
        return
    await asyncio.gather(*(_keep_up(*w, say) for w in watched))


async def _restart_nats(nats: EmbeddedNats) -> None:
    # Spawned on this (the main) thread: nats-server dies with the thread that started it.
    nats.respawn()
    deadline = asyncio.get_running_loop().time() + 20
    while not nats.accepting():
        if asyncio.get_running_loop().time() > deadline:
            nats.process.kill()
            raise RuntimeError("it did not accept connections within 20 s")
        await asyncio.sleep(0.05)


async def _keep_up(name: str, alive: Callable[[], bool],
                   restart: Callable[[], Awaitable[None]], say: Callable[[str], None]) -> None:
    started = time.monotonic()
    delay: float | None = None
    while True:
        await asyncio.sleep(WATCH_INTERVAL)
        if await asyncio.to_thread(alive):
            continue
        died = time.monotonic()
        delay = SERVER_BACKOFF.next(delay, died - started)
        say(f"{name} died unexpectedly; restarting it in {delay:g} s")
        attempts = 0
        while True:
            await asyncio.sleep(delay)
            attempts += 1
            try:
                await restart()
                break
            except Exception as exc:  # whatever it was, try again later
                delay = SERVER_BACKOFF.next(delay, 0.0)
                if attempts == 1:  # one line, not one per attempt
                    say(f"{name} could not be restarted yet ({_first_line(exc)}); "
                        f"retrying every {SERVER_BACKOFF.limit:g} s at most")
        started = time.monotonic()
        say(f"{name} restarted after {started - died:.1f} s down")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
