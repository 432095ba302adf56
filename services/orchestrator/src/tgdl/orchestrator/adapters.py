"""The orchestrator's ports over NATS and PostgreSQL, where `tgdl.bus` has no adapter."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import asyncpg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from tgdl.contracts.catalog import CatalogEntry
from tgdl.contracts.jobs import DownloadJob
from tgdl.contracts.subjects import Names
from tgdl.db import catalog


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class PgCatalog:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def get_many(self, ids: Sequence[int]) -> Mapping[int, CatalogEntry]:
        async with self._pool.acquire() as conn:
            return await catalog.get_many(conn, ids)

    async def every_name(self, chats: frozenset[str]) -> frozenset[str]:
        return await catalog.every_name(self._pool, chats) or chats


class JobStream:
    """Job messages stored in the jobs work-queue stream."""

    def __init__(self, js: JetStreamContext, names: Names) -> None:
        self._js = js
        self._stream = names.jobs_stream

    async def get(self, seq: int) -> DownloadJob | None:
        try:
            raw = await self._js.get_msg(self._stream, seq)
            return DownloadJob.model_validate_json(raw.data or b"")
        except (NotFoundError, ValidationError):  # gone, or never one of our jobs
            return None

    async def delete(self, seq: int) -> None:
        with contextlib.suppress(NotFoundError):
            await self._js.delete_msg(self._stream, seq)
