"""How every service connects to NATS: one set of options, a seed list of servers.

`TGDL_NATS_URL` may name several servers of a cluster, comma-separated
(``nats://a:4222,nats://b:4222``); the client connects to any of them and fails over.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import nats
import nats.errors
from faststream.nats import NatsBroker
from nats.aio.client import Client as NATS

RECONNECT_WAIT = 0.5  # seconds between reconnect attempts (forever: services outlive outages)


def servers(url: str) -> list[str]:
    """The seed servers named by a NATS URL setting (one URL, or several comma-separated)."""
    found = [part.strip() for part in url.split(",") if part.strip()]
    if not found:
        raise ValueError("no NATS server given")
    return found


class Broker(NatsBroker):
    """FastStream's broker, able to stop while its server is away: draining needs a
    server, so a connection that is reconnecting is closed instead."""

    async def stop(self, exc_type: type[BaseException] | None = None,
                   exc_val: BaseException | None = None, exc_tb: TracebackType | None = None,
                   ) -> None:
        try:
            await super().stop(exc_type, exc_val, exc_tb)
        except (nats.errors.ConnectionReconnectingError, nats.errors.ConnectionClosedError):
            if self._connection is not None:
                await self._connection.close()
                self._connection = None
            self.config.disconnect()


def nats_broker(url: str, name: str, **options: Any) -> NatsBroker:
    """A FastStream broker with the project's connection options; nothing connects yet."""
    return Broker(servers(url), name=name, max_reconnect_attempts=-1,
                  reconnect_time_wait=RECONNECT_WAIT, **options)


async def connect(url: str, name: str) -> NATS:
    """A plain nats-py client with the same options (tools and tests)."""
    return await nats.connect(servers=servers(url), name=name, max_reconnect_attempts=-1,
                              reconnect_time_wait=RECONNECT_WAIT)
