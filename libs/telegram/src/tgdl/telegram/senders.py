"""A pool of MTProto connections per data center, for fetching file parts in parallel.

Telethon's client has one connection to the home data center and borrows one exported
connection per other data center; one connection answers one request after another, so a
file fetched over it goes at one request per round trip. The pool opens up to `size`
connections per data center (the session's own authorization at home, an exported one
elsewhere, both as Telethon builds them) and lends each to one request at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import AsyncIterator
from typing import Any

from telethon import TelegramClient
from telethon.tl import functions
from telethon.tl.alltlobjects import LAYER


async def open_sender(client: TelegramClient, dc_id: int) -> Any:
    """A new connected sender to `dc_id`, authorized as the client's account."""
    if dc_id != client.session.dc_id:
        return await client._create_exported_sender(dc_id)
    # Another connection with the session's key: a new MTProto session that, like every
    # session, starts with initConnection. Same sender class as the client's own.
    sender = type(client._sender)(client.session.auth_key, loggers=client._log)
    await sender.connect(client._connection(
        client.session.server_address, client.session.port, dc_id, loggers=client._log,
        proxy=client._proxy, local_addr=client._local_addr,
    ))
    init = copy.copy(client._init_request)
    init.query = functions.help.GetConfigRequest()
    await sender.send(functions.InvokeWithLayerRequest(LAYER, init))
    return sender


class SenderPool:
    """Up to `size` connections per data center, each lent to one request at a time."""

    def __init__(self, client: TelegramClient, size: int) -> None:
        self._client = client
        self.size = size
        self._slots: dict[int, asyncio.Semaphore] = {}
        self._idle: dict[int, list[Any]] = {}
        self._open: list[Any] = []
        self._small: dict[int, Any] = {}
        self._opening: dict[int, asyncio.Lock] = {}

    @contextlib.asynccontextmanager
    async def sender(self, dc_id: int) -> AsyncIterator[Any]:
        slots = self._slots.setdefault(dc_id, asyncio.Semaphore(self.size))
        async with slots:
            idle = self._idle.setdefault(dc_id, [])
            sender = idle.pop() if idle else None
            if sender is None or not sender.is_connected():
                sender = await open_sender(self._client, dc_id)
                self._open.append(sender)
            try:
                yield sender
            finally:
                idle.append(sender)

    async def small(self, dc_id: int) -> Any:
        """The connection for small requests (range hashes) to `dc_id`, one per data
        center beside the pool: they never wait behind a part for a slot, and MTProto
        answers the requests on one connection in any order."""
        async with self._opening.setdefault(dc_id, asyncio.Lock()):
            sender = self._small.get(dc_id)
            if sender is None or not sender.is_connected():
                sender = self._small[dc_id] = await open_sender(self._client, dc_id)
            return sender

    def connections(self) -> int:
        """Connections of the pool (those for small requests not counted)."""
        return len(self._open)

    async def close(self) -> None:
        senders = [*self._open, *self._small.values()]
        self._open = []
        self._idle.clear()
        self._small.clear()
        for sender in senders:
            with contextlib.suppress(Exception):
                await sender.disconnect()
