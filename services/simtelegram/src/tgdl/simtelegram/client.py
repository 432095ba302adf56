"""Small HTTP helpers for programs that drive the simulated Telegram (the launcher, tests,
benchmarks). The downloader does not use these: it speaks to the server through its own
adapter."""

from __future__ import annotations

import asyncio
import ssl
import time
from functools import cache
from typing import Any

import httpx

from tgdl.contracts.catalog import CatalogEntry

_TIMEOUT = httpx.Timeout(10.0, connect=5.0)


@cache
def _tls() -> ssl.SSLContext:
    return httpx.create_ssl_context()  # built once: it costs tens of ms


def _client(base_url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base_url, timeout=_TIMEOUT, verify=_tls())


async def _call(method: str, base_url: str, path: str, body: Any = None) -> Any:
    async with _client(base_url) as http:
        return await _send(http, method, path, body)


async def _send(http: httpx.AsyncClient, method: str, path: str, body: Any = None) -> Any:
    response = await http.request(method, path, json=body)
    response.raise_for_status()
    return response.json()


async def fetch_catalog(base_url: str) -> list[CatalogEntry]:
    """Every message of the simulated chats, as a sync would have seen them."""
    return [CatalogEntry.model_validate(row) for row in await _call("GET", base_url, "/catalog")]


def _int_keys(table: dict[str, int]) -> dict[int, int]:
    return {int(key): value for key, value in table.items()}


async def stats(base_url: str) -> dict[str, Any]:
    """``GET /stats`` with the per-message tables keyed by int message id:
    serving, max_serving, serving_ids (files), connections, max_connections (streams),
    requests (content, per message), file_requests (content, per file id: forwards of
    one file share it), lookups (of the message itself, as
    messages.getMessages), bytes_sent, bytes_sent_by_id."""
    async with _client(base_url) as http:
        return await _stats(http)


async def _stats(http: httpx.AsyncClient) -> dict[str, Any]:
    snapshot = await _send(http, "GET", "/stats")
    snapshot["requests"] = _int_keys(snapshot["requests"])
    snapshot["file_requests"] = _int_keys(snapshot["file_requests"])
    snapshot["lookups"] = _int_keys(snapshot["lookups"])
    snapshot["bytes_sent_by_id"] = _int_keys(snapshot["bytes_sent_by_id"])
    return snapshot


async def reset_stats(base_url: str) -> None:
    """Forget request and byte counters and the serving maximum."""
    await _call("POST", base_url, "/stats/reset")


async def set_faults(base_url: str, **faults: Any) -> dict[str, Any]:
    """Add faults, e.g. ``set_faults(url, flood_wait={"message_id": 3, "seconds": 2})``
    or ``set_faults(url, drop={"message_id": 3, "after_bytes": 1000}, delete=[4])``.
    Returns every fault now pending; raises httpx.HTTPStatusError on bad input (422)."""
    return await _call("POST", base_url, "/faults", faults)


async def clear_faults(base_url: str) -> None:
    await _call("DELETE", base_url, "/faults")


async def until_serving(base_url: str, count: int, within: float = 5.0) -> dict[str, Any]:
    """Poll ``/stats`` until exactly `count` files are being served; the last snapshot.
    Raises TimeoutError after `within` seconds."""
    deadline = time.monotonic() + within
    async with _client(base_url) as http:
        while True:
            snapshot = await _stats(http)
            if snapshot["serving"] == count:
                return snapshot
            if time.monotonic() > deadline:
                raise TimeoutError(f"serving stayed {snapshot['serving']}, expected {count}")
            await asyncio.sleep(0.02)


async def post_message(base_url: str, chat: str, **fields: Any) -> CatalogEntry:
    """Post a new message to a chat, e.g. ``post_message(url, "sim_demo",
    media_kind="video", size=2_000_000, caption="match me")``; the entry as synced."""
    return CatalogEntry.model_validate(
        await _call("POST", base_url, f"/chats/{chat}/messages", fields))
