"""Whether the read model can be current: a status answered from PostgreSQL says `stale`
when the projector has not applied what the streams hold for a while, or when NATS is
unreachable (then nothing new can reach the read model)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

log = logging.getLogger("tgdl.gateway")

Positions = Callable[[], Awaitable[dict[str, int]]]
MAX_SAMPLES = 600  # per stream, while the projector is behind


class Freshness:
    """Samples every stream's last sequence and the projector's stored positions once per
    `interval`; a sequence seen more than `stale_after` seconds ago and still not applied
    makes the read model stale."""

    def __init__(self, nc: NATS, streams: list[str], positions: Positions,
                 stale_after: float, interval: float = 1.0) -> None:
        self._nc = nc
        self._streams = streams
        self._positions = positions
        self._stale_after = stale_after
        self._interval = interval
        # per stream: (monotonic time first seen, last sequence), oldest first
        self._unapplied: dict[str, deque[tuple[float, int]]] = {s: deque() for s in streams}
        self._lag: tuple[str, float] | None = None

    def reason(self) -> str | None:
        """Why the read model cannot be current right now, or None."""
        if not self._nc.is_connected:
            return "NATS is unreachable: changes since then have not reached the read model"
        if self._lag is not None:
            stream, seconds = self._lag
            return f"the read model is {seconds:.0f} s behind the stream {stream}"
        return None

    def mark(self, body: bytes) -> bytes:
        """A status body as it is, or with `stale` and `stale_reason` when stale (a
        current body stays byte for byte what the projector publishes)."""
        reason = self.reason()
        if reason is None:
            return body
        return json.dumps({**json.loads(body), "stale": True, "stale_reason": reason}).encode()

    async def sample(self) -> None:
        js = self._nc.jetstream()
        now = time.monotonic()
        for stream in self._streams:
            try:
                info = await js.stream_info(stream)
            except NotFoundError:
                continue
            seen = self._unapplied[stream]
            if not seen or info.state.last_seq > seen[-1][1]:
                if len(seen) >= MAX_SAMPLES:
                    del seen[1]  # bounded, keeping the oldest: it measures the lag
                seen.append((now, info.state.last_seq))
        positions = await self._positions()
        lag: tuple[str, float] | None = None
        for stream, seen in self._unapplied.items():
            applied = positions.get(stream, 0)
            while seen and seen[0][1] <= applied:
                seen.popleft()
            if seen and now - seen[0][0] > self._stale_after:
                behind = now - seen[0][0]
                if lag is None or behind > lag[1]:
                    lag = (stream, behind)
        self._lag = lag

    async def run(self) -> None:
        """Sample until cancelled; a failed sample (a server down) changes nothing, the
        request that needs that server answers 503 anyway."""
        while True:
            if self._nc.is_connected:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(max(self._interval, 2.0)):
                        await self.sample()
            await asyncio.sleep(self._interval)
