"""A pool of MTProto connections per data center, for fetching file parts in parallel.

Telethon's client has one connection to the home data center and borrows one exported
connection per other data center; one connection answers one request after another, so a
file fetched over it goes at one request per round trip. The pool opens up to `size`
connections per data center (the session's own authorization at home, an exported one
elsewhere, both as Telethon builds them) and lends each to a few requests at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # Telethon is imported where a real account is used (`Lanes` is not)
    from telethon import TelegramClient


async def open_sender(client: TelegramClient, dc_id: int) -> Any:
    """A new connected sender to `dc_id`, authorized as the client's account."""
    from telethon.tl import functions
    from telethon.tl.alltlobjects import LAYER

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
    try:
        await sender.send(functions.InvokeWithLayerRequest(LAYER, init))
    except BaseException:  # refused (a flood wait) or cancelled: no half-open connection
        with contextlib.suppress(Exception):
            await sender.disconnect()
        raise
    return sender


class Lanes:
    """`count` connections carrying at most `depth` requests each. Two requests on one
    connection hide the round trip between parts (the next answer is on its way while the
    last one still arrives), so a connection is filled before the next one is used: k
    parts of 2 requests each then take k connections, as Telegram counts them."""

    def __init__(self, count: int, depth: int) -> None:
        self.load = [0] * count
        self.depth = depth
        self._free = asyncio.Semaphore(count * depth)

    @contextlib.asynccontextmanager
    async def lane(self) -> AsyncIterator[int]:
        async with self._free:  # then some lane has room (no await until it is taken)
            index = max((i for i, n in enumerate(self.load) if n < self.depth),
                        key=lambda i: (self.load[i], -i))
            self.load[index] += 1
            try:
                yield index
            finally:
                self.load[index] -= 1


class SenderPool:
    """Up to `size` connections per data center, each carrying up to `depth` requests."""

    def __init__(self, client: TelegramClient, size: int, depth: int = 2) -> None:
        self._client = client
        self.size = size
        self.depth = depth
        self._lanes: dict[int, Lanes] = {}
        self._senders: dict[tuple[int, int], Any] = {}  # (dc, lane) -> sender
        self._small: dict[int, Any] = {}
        self._opening: dict[tuple[int, int], asyncio.Lock] = {}

    @contextlib.asynccontextmanager
    async def sender(self, dc_id: int) -> AsyncIterator[Any]:
        lanes = self._lanes.setdefault(dc_id, Lanes(self.size, self.depth))
        async with lanes.lane() as lane:
            yield await self._connected((dc_id, lane), self._senders)

    async def small(self, dc_id: int) -> Any:
        """The connection for small requests (range hashes) to `dc_id`, one per data
        center beside the pool: they never wait behind a part for a lane."""
        return await self._connected((dc_id, -1), self._small)

    async def _connected(self, key: tuple[int, int], senders: dict) -> Any:
        async with self._opening.setdefault(key, asyncio.Lock()):
            sender = senders.get(key)
            if sender is None or not sender.is_connected():
                sender = senders[key] = await open_sender(self._client, key[0])
            return sender

    def connections(self) -> int:
        """Connections of the pool (those for small requests not counted)."""
        return len(self._senders)

    async def close(self) -> None:
        senders = [*self._senders.values(), *self._small.values()]
        self._senders.clear()
        self._small.clear()
        for sender in senders:
            with contextlib.suppress(Exception):
                await sender.disconnect()
