"""Flood waits shared by every replica of one Telegram account.

When Telegram tells one replica to wait, it writes the deadline into the flood bucket; all
replicas of the account watch that key and hold off until it passes, instead of each one
hitting the limit again and making the wait longer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue


class FloodGate:
    def __init__(self, kv: KeyValue, account: str, replica: str) -> None:
        self._kv = kv
        self._key = re.sub(r"[^A-Za-z0-9_=-]", "_", account) or "default"
        self._replica = replica
        self.deadline = 0.0  # wall-clock seconds; shared across processes
        self._watch: asyncio.Task | None = None
        self._watcher = None

    async def start(self) -> None:
        self._watcher = await self._kv.watch(self._key)
        self._watch = asyncio.create_task(self._follow(self._watcher))

    async def _follow(self, watcher) -> None:
        async for entry in watcher:
            if entry is not None and entry.value:
                with contextlib.suppress(ValueError, KeyError):
                    self.deadline = max(self.deadline, float(json.loads(entry.value)["until"]))

    async def stop(self) -> None:
        if self._watch:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        if self._watcher is not None:
            # its heartbeat check would otherwise outlive the connection and log errors
            with contextlib.suppress(Exception):
                await self._watcher.stop()

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.time())

    async def hold(self, seconds: float) -> None:
        """Every replica of the account waits until now + seconds (never shortens a wait)."""
        until = time.time() + seconds
        self.deadline = max(self.deadline, until)
        body = json.dumps({"until": until, "seconds": seconds, "by": self._replica}).encode()
        while True:
            try:
                entry = await self._kv.get(self._key)
            except KeyNotFoundError:
                entry = None
            try:
                if entry is None or not entry.value:
                    await self._kv.create(self._key, body)
                elif float(json.loads(entry.value)["until"]) < until:
                    await self._kv.update(self._key, body, last=entry.revision)
                return
            except KeyWrongLastSequenceError:
                continue
