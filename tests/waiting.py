"""Waiting on conditions with a deadline (never on fixed sleeps)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


async def until(predicate: Callable[[], Any], within: float = 20.0, *, what: str = "condition",
                every: float = 0.05) -> Any:
    """Await `predicate()` (sync or async) becoming truthy: returns its value, or raises
    TimeoutError naming `what` once `within` seconds have passed."""
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {within} s")
        await asyncio.sleep(every)
