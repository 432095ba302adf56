"""The gateway's guard on its own: open event streams per client are capped, and a
token is accepted in constant time whichever entry it matches."""

from __future__ import annotations

import asyncio
import json

from tgdl.gateway.security import GuardMiddleware, Limits, Tokens, allowed_hosts, host_name


def guard(app, streams: int = 2) -> GuardMiddleware:
    return GuardMiddleware(app, Tokens("", 60), allowed_hosts([], "127.0.0.1"),
                           Limits(max_body_bytes=1024, max_event_streams=streams))


async def call(app, path: str, client: str = "10.0.0.1") -> tuple[int, dict]:
    scope = {"type": "http", "method": "GET", "path": path, "query_string": b"",
             "headers": [(b"host", b"localhost")], "client": (client, 1)}
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(message):
        sent.append(message)
    await app(scope, receive, send)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(body) if body else {}


async def test_open_event_streams_per_client_are_capped_at_429():
    release, entered = asyncio.Event(), asyncio.Semaphore(0)

    async def stream(scope, receive, send):  # an event stream that stays open
        entered.release()
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})
    app = guard(stream)
    held = [asyncio.create_task(call(app, f"/api/media/batch-events/b{i}")) for i in range(2)]
    for _ in held:
        await entered.acquire()
    status, body = await call(app, "/api/media/batch-events/b3")
    assert status == 429 and body["error"] == "too_many_requests" and body["suggestion"]
    other = asyncio.create_task(call(app, "/api/media/batch-events/b4", client="10.0.0.2"))
    await entered.acquire()  # another client is not counted against this one
    release.set()
    assert [s for s, _ in await asyncio.gather(*held, other)] == [200, 200, 200]
    assert (await call(app, "/api/media/batch-events/b5"))[0] == 200  # closed ones count off
    assert not app.streams


def test_tokens_plain_and_hashed():
    import hashlib
    tokens = Tokens(f"one, sha256:{hashlib.sha256(b'two').hexdigest()}", 60)
    assert tokens.accepts("one") and tokens.accepts("two")
    assert not tokens.accepts("three") and not tokens.accepts("") and not tokens.accepts(None)
    assert not Tokens("", 60).enabled and Tokens("", 60).sign("/media/a") == "/media/a"


def test_host_names():
    assert [host_name(h) for h in ("LocalHost:8000", "[::1]:80", "::1", "a.b")] == [
        "localhost", "::1", "::1", "a.b"]
    assert allowed_hosts(["*"], "0.0.0.0") is None
    assert "0.0.0.0" not in allowed_hosts([], "0.0.0.0")
    assert "10.1.2.3" in allowed_hosts([], "10.1.2.3")


def test_tokens_limited_to_chats():
    import pytest

    from tgdl.gateway.security import parse_limited
    tokens = Tokens("full", 60, limited="a@@MyChannel,-100123; b@other")
    assert tokens.match("full") == (True, None)
    assert tokens.match("a") == (True, frozenset({"mychannel", "-100123"}))
    assert tokens.match("b") == (True, frozenset({"other"}))
    assert tokens.match("c") == (False, None)
    for bad in ("nochats", "@chan", "tok@", "tok@ , "):
        with pytest.raises(ValueError, match="TGDL_API_TOKENS"):
            parse_limited(bad)
