"""Connections scoped to the configured schema. Pools stay small and drop idle
connections quickly: the database is never held open longer than the work needs."""

from __future__ import annotations

import asyncpg


def _server_settings(schema: str) -> dict[str, str]:
    return {"search_path": schema, "application_name": "tgdl"}


async def connect(dsn: str, schema: str) -> asyncpg.Connection:
    return await asyncpg.connect(dsn, server_settings=_server_settings(schema))


async def create_pool(dsn: str, schema: str, max_size: int = 4,
                      command_timeout: float | None = None) -> asyncpg.Pool:
    """`command_timeout`: each query's deadline (TimeoutError after it); None: none."""
    return await asyncpg.create_pool(
        dsn,
        min_size=0,
        max_size=max_size,
        max_inactive_connection_lifetime=30.0,
        command_timeout=command_timeout,
        server_settings=_server_settings(schema),
    )
