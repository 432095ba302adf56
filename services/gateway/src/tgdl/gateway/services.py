"""What the routes share, built by the app's lifespan: settings, NATS, the DB pool."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import asyncpg
from fastapi import Request
from nats.aio.client import Client as NATS

from tgdl.gateway.commands import OrchestratorClient
from tgdl.gateway.settings import GatewaySettings


@dataclass(frozen=True)
class Services:
    settings: GatewaySettings
    nc: NATS
    pool: asyncpg.Pool
    orchestrator: OrchestratorClient

    async def until_projected(self, batch_id: str) -> bool:
        """Wait (briefly) until the read model knows a batch the orchestrator just
        accepted, so a status query right after the start finds it. The projector
        publishes a snapshot after writing it; subscribe first, then look."""
        sub = await self.nc.subscribe(self.settings.names.batch_progress(batch_id))
        try:
            if await self.pool.fetchval("SELECT 1 FROM batches WHERE batch_id = $1", batch_id):
                return True
            try:
                await sub.next_msg(timeout=self.settings.projection_wait)
                return True
            except TimeoutError:
                return False
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


def services(request: Request) -> Services:
    return request.app.state.services
