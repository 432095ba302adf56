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
import os
import socket
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

from tgdl.launcher.embedded import (
    EmbeddedNats,
    EmbeddedPostgres,
    free_port,
    start_nats,
    start_postgres,
)
from tgdl.launcher.plan import NATS_PREFERRED_PORT, Home, pick_port


@dataclass(frozen=True)
class Endpoints:
    nats_url: str
    database_url: str


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


def _start_embedded_nats(home: Home) -> EmbeddedNats:
    port = pick_port(NATS_PREFERRED_PORT, False, port_is_free, free_port, "NATS", "")
    try:
        return start_nats(home.nats, port=port, sync_always=True)
    except RuntimeError:
        if port != NATS_PREFERRED_PORT:
            raise
        return start_nats(home.nats, port=free_port(), sync_always=True)  # lost a race


@contextlib.asynccontextmanager
async def servers_for(
    home: Home, env: Mapping[str, str], say: Callable[[str], None], owner: bool = False
) -> AsyncIterator[Endpoints]:
    """Yield the servers to use. `owner` is for `tgdl run`: it must hold the data folder
    for its whole life and tells other commands where its servers are."""
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
    try:
        if not nats_url:
            # On this (the main) thread: nats-server is told to die with the thread that
            # started it (see lifeline), and pool threads come and go.
            nats = _start_embedded_nats(home)
            nats_url = nats.url
            say(f"Started nats-server (JetStream) on {nats.url}, data in {home.nats}")
        if not database_url:
            postgres = await asyncio.to_thread(start_postgres, home.postgres)
            database_url = postgres.url
            say(f"Started PostgreSQL, data in {home.postgres}")
        endpoints = Endpoints(nats_url, database_url)
        if owner:
            home.instance.write_text(json.dumps({**asdict(endpoints), "pid": os.getpid()}))
        yield endpoints
    finally:
        if owner:
            home.instance.unlink(missing_ok=True)
        if nats is not None:
            await asyncio.to_thread(nats.stop)
            say("Stopped nats-server")
        if postgres is not None:
            await asyncio.to_thread(postgres.stop)
            say("Stopped PostgreSQL")
        lock.release()
