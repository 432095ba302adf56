"""Where the projection stands: the last sequence it applied of each stream it follows.

All of them live in one row (`projection_state.positions`, stream -> sequence), so a
transaction of the projector stores its positions with one row write however many
streams it advanced. Only the projector writes it (`save_positions`); the gateway reads
it to tell how far the read model lags behind the streams.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Any, Protocol

import asyncpg


class Reader(Protocol):  # a connection, a pool, or the gateway's Database
    async def fetchval(self, query: str, *args: Any) -> Any: ...


class PositionsMoved(RuntimeError):
    """The stored positions are not the ones this projector last stored: another projector
    wrote the read model meanwhile (it took the lock while this one's session was lost)."""


async def load_positions(conn: Reader) -> dict[str, int]:
    stored = await conn.fetchval("SELECT positions FROM projection_state")
    return {s: int(seq) for s, seq in json.loads(stored).items()} if stored else {}


async def until_reached(conn: Reader, targets: Mapping[str, int], within: float,
                        poll: float = 0.01) -> tuple[bool, dict[str, int]]:
    """Read the positions until every stream of `targets` is at or past its target (True)
    or `within` seconds have passed (False); returns that with the positions last read."""
    deadline = time.monotonic() + within
    while True:
        positions = await load_positions(conn)
        if all(positions.get(s, 0) >= seq for s, seq in targets.items()):
            return True, positions
        if time.monotonic() >= deadline:
            return False, positions
        await asyncio.sleep(poll)


def _rows(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])  # "UPDATE 1", "INSERT 0 1"


async def save_positions(conn: asyncpg.Connection, positions: Mapping[str, int],
                         held: Mapping[str, int]) -> None:
    """Move the streams of `positions` there, from `held` (every position this projector
    stored or loaded last), in the caller's transaction. A compare-and-set: if another
    projector moved any of them meanwhile, raise PositionsMoved, so the transaction's
    changes are rolled back instead of written over (or under) the other's."""
    new = json.dumps({**held, **positions})
    if held:
        status = await conn.execute(
            "UPDATE projection_state SET positions = $1::jsonb WHERE positions = $2::jsonb",
            new, json.dumps(dict(held)))
        if _rows(status) != 1:
            raise PositionsMoved(f"positions are no longer {dict(held)}")
    else:
        status = await conn.execute(
            "INSERT INTO projection_state (positions) VALUES ($1::jsonb) "
            "ON CONFLICT DO NOTHING", new)
        if _rows(status) != 1:
            raise PositionsMoved("positions were stored by another projector")
