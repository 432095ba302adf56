"""One session starts the real servers; every test gets its own names.

A real nats-server (JetStream, fsync on every write) and a real PostgreSQL are started
once per session with their data in a temporary folder. Each test gets a fresh NATS
namespace (stream, subject and bucket names) and a fresh PostgreSQL schema, so tests never
see each other's data. Set TGDL_TEST_NATS_URL / TGDL_TEST_DATABASE_URL to use servers of
your own instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tgdl.launcher.embedded import start_nats, start_postgres


@dataclass(frozen=True)
class Servers:
    nats_url: str
    database_url: str


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    nats_url = os.environ.get("TGDL_TEST_NATS_URL")
    database_url = os.environ.get("TGDL_TEST_DATABASE_URL")
    base = tmp_path_factory.mktemp("servers")
    nats = None if nats_url else start_nats(base / "nats")
    pg = None if database_url else start_postgres(base / "pg")
    try:
        yield Servers(nats_url or nats.url, database_url or pg.url)  # type: ignore[union-attr]
    finally:
        if nats:
            nats.stop()
        if pg:
            pg.stop()


@dataclass(frozen=True)
class Isolation:
    """Names that belong to one test only."""

    namespace: str  # NATS prefix: subjects, streams, buckets
    schema: str  # PostgreSQL schema
    media_root: Path

    def env(self, servers: Servers) -> dict[str, str]:
        """Environment for a service process of this test."""
        return {
            "TGDL_NATS_URL": servers.nats_url,
            "TGDL_DATABASE_URL": servers.database_url,
            "TGDL_NAMESPACE": self.namespace,
            "TGDL_DB_SCHEMA": self.schema,
            "TGDL_MEDIA_ROOT": str(self.media_root),
        }


@pytest.fixture
def isolation(tmp_path: Path) -> Isolation:
    token = uuid.uuid4().hex[:10]
    media = tmp_path / "media"
    media.mkdir()
    return Isolation(namespace=f"t{token}", schema=f"t_{token}", media_root=media)


@pytest.fixture
async def nc(servers: Servers) -> AsyncIterator:
    import nats

    client = await nats.connect(servers.nats_url)
    yield client
    await client.drain()
