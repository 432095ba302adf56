"""What stands between the network and the API: the `Host` check (DNS rebinding), API
tokens, signed `/media/` links, the cross-site guard on state-changing requests, the body
cap and the cap on open event streams. One ASGI middleware around the whole app, so the
`/media` mount is covered as well as the routes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tgdl.contracts.config import chat_key

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
# Open without a token: the page and its files (it asks for the token), the API's
# description, liveness (up/down only when tokens are on) and the metrics.
PUBLIC_PATHS = ("/", "/healthz", "/metrics", "/docs", "/redoc", "/openapi.json",
                "/docs/oauth2-redirect", "/favicon.ico")
PUBLIC_PREFIXES = ("/static/",)
EVENTS_PREFIX = "/api/media/batch-events/"
MEDIA_PREFIX = "/media/"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def parse_tokens(value: str) -> list[bytes]:
    """`TGDL_API_TOKEN`: comma-separated tokens, each as is or as `sha256:<hex>` of it
    (so a configuration file need not hold the token itself)."""
    out = []
    for entry in (e.strip() for e in value.split(",")):
        if not entry:
            continue
        if entry.startswith("sha256:"):
            try:
                raw = bytes.fromhex(entry.removeprefix("sha256:"))
            except ValueError:
                raise ValueError("TGDL_API_TOKEN: a sha256: entry must be 64 hex digits") from None
            if len(raw) != 32:
                raise ValueError("TGDL_API_TOKEN: a sha256: entry must be 64 hex digits")
            out.append(raw)
        else:
            out.append(digest(entry))
    return out


def parse_limited(value: str) -> list[tuple[bytes, frozenset[str]]]:
    """`TGDL_API_TOKENS`: tokens limited to chats, `;`-separated entries of
    `<token>@<chat>[,<chat>...]` (the token as is or `sha256:<hex>`; it holds no `@`)."""
    out = []
    for entry in (e.strip() for e in value.split(";")):
        if not entry:
            continue
        token, _, chats = entry.partition("@")
        keys = frozenset(chat_key(c) for c in chats.split(",") if c.strip())
        if not token.strip() or not keys:
            raise ValueError("TGDL_API_TOKENS: each entry is <token>@<chat>[,<chat>...], "
                             "entries separated by ';'")
        out += [(d, keys) for d in parse_tokens(token)]
    return out


NOT_ACCEPTED = (False, None)


class Tokens:
    """The accepted tokens, kept as SHA-256 digests and compared in constant time (every
    entry is compared, whichever matches); a token may be limited to chats."""

    def __init__(self, value: str, signing_ttl: float, limited: str = "") -> None:
        self.entries: list[tuple[bytes, frozenset[str] | None]] = [
            (d, None) for d in parse_tokens(value)] + list(parse_limited(limited))
        self.ttl = signing_ttl
        # Every gateway replica with the same tokens derives the same key, so a link one
        # replica signed opens on another.
        self._key = hashlib.sha256(
            b"tgdl media links\0" + b"".join(sorted(d for d, _ in self.entries))).digest()

    @property
    def enabled(self) -> bool:
        return bool(self.entries)

    def match(self, presented: str | None) -> tuple[bool, frozenset[str] | None]:
        """(accepted, the chats the token is limited to or None)."""
        if not presented or not self.enabled:
            return NOT_ACCEPTED
        given = digest(presented)
        found: tuple[bool, frozenset[str] | None] = NOT_ACCEPTED
        for known, chats in self.entries:
            if hmac.compare_digest(given, known):
                found = (True, chats)
        return found

    def accepts(self, presented: str | None) -> bool:
        return self.match(presented)[0]

    def _mac(self, path: str, exp: int) -> str:
        mac = hmac.new(self._key, f"{path}\n{exp}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def sign(self, url: str, now: float | None = None) -> str:
        """A `/media/` link that opens without the token until it expires."""
        if not self.enabled:
            return url
        exp = int((now or time.time()) + self.ttl)
        return f"{url}?exp={exp}&sig={self._mac(url, exp)}"

    def signed(self, path: str, query: str, now: float | None = None) -> bool:
        args = parse_qs(query)
        try:
            exp = int(args["exp"][0])
            sig = args["sig"][0]
        except (KeyError, ValueError, IndexError):
            return False
        if exp < (now or time.time()):
            return False
        return hmac.compare_digest(sig.encode(), self._mac(path, exp).encode())

    def sign_urls(self, value: Any) -> Any:
        """Every `download_url` in a JSON-like value, signed."""
        if not self.enabled:
            return value
        if isinstance(value, dict):
            return {k: (self.sign(v) if k == "download_url" and isinstance(v, str)
                        else self.sign_urls(v)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.sign_urls(v) for v in value]
        return value

    def sign_json(self, body: bytes) -> bytes:
        if not self.enabled or b"download_url" not in body:
            return body
        return json.dumps(self.sign_urls(json.loads(body)), separators=(",", ":")).encode()


def allowed_hosts(configured: Iterable[str], bind_host: str) -> frozenset[str] | None:
    """The names the `Host` header may carry; None: any (`*` configured)."""
    names = {n.strip().lower().strip("[]") for n in configured if n.strip()}
    if "*" in names:
        return None
    names |= set(LOOPBACK_NAMES)
    if bind_host not in ("0.0.0.0", "::", ""):
        names.add(bind_host.lower().strip("[]"))
    return frozenset(names)


def host_name(header: str) -> str:
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes")


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int
    max_event_streams: int  # per token, or per client address when anonymous


def _json(status: int, error: str, detail: str, suggestion: str,
          headers: dict[str, str] | None = None) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    body = json.dumps({"error": error, "detail": detail, "suggestion": suggestion}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return status, body, raw


class GuardMiddleware:
    def __init__(self, app: ASGIApp, tokens: Tokens, hosts: frozenset[str] | None,
                 limits: Limits) -> None:
        self.app = app
        self.tokens = tokens
        self.hosts = hosts
        self.limits = limits
        self.streams: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope["headers"]}
        refusal = self.refusal(scope, headers)
        if refusal is not None:
            await _send(send, *refusal)
            return
        accepted, chats, token = self._caller(scope, headers)
        state = scope.setdefault("state", {})
        state["tgdl_authenticated"] = accepted or not self.tokens.enabled
        state["tgdl_chats"] = chats  # a token limited to chats: only these are shown
        receive = self._capped(headers, receive)
        if not scope["path"].startswith(EVENTS_PREFIX):
            await self.app(scope, receive, send)
            return
        # Counted per token: clients behind one proxy share an address, not a token.
        if accepted:
            client = "token:" + digest(token or "").hex()
        else:
            client = scope["client"][0] if scope.get("client") else "?"
        if self.streams[client] >= self.limits.max_event_streams:
            whose = "token" if accepted else "client address"
            await _send(send, *_json(
                429, "too_many_requests",
                f"this {whose} already has {self.streams[client]} event streams open",
                "Close an event stream (or poll GET /api/media/batch-status/{batch_id}) "
                "and try again.", {"Retry-After": "5"}))
            return
        self.streams[client] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.streams[client] -= 1
            if not self.streams[client]:
                del self.streams[client]

    def _bearer(self, headers: dict[str, str]) -> str | None:
        scheme, _, value = headers.get("authorization", "").partition(" ")
        return value.strip() if scheme.lower() == "bearer" else None

    def _caller(self, scope: Scope, headers: dict[str, str]
                ) -> tuple[bool, frozenset[str] | None, str | None]:
        """(accepted, the token's chats, the token) of the request's token."""
        token = self._bearer(headers)
        found = self.tokens.match(token)
        if not found[0] and scope["path"].startswith(EVENTS_PREFIX):
            query = scope.get("query_string", b"").decode("latin-1")
            token = parse_qs(query).get("access_token", [None])[0]
            found = self.tokens.match(token)
        return (*found, token)

    def refusal(self, scope: Scope, headers: dict[str, str]) -> tuple | None:
        host = host_name(headers.get("host", ""))
        if self.hosts is not None and host not in self.hosts:
            return _json(421, "misdirected_request",
                         f"this server does not answer for the host {host!r}",
                         "Use the address the server was configured with, or add the name "
                         "to TGDL_ALLOWED_HOSTS.")
        path, method = scope["path"], scope["method"]
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.limits.max_body_bytes:
            return _json(413, "too_large",
                         f"the request body is larger than {self.limits.max_body_bytes} bytes",
                         "Send fewer message ids per request.")
        if method not in SAFE_METHODS and self._cross_site(headers):
            return _json(403, "cross_site_request",
                         "a state-changing request from a browser must be sent as JSON "
                         "(Content-Type: application/json) or carry the API token",
                         "Send the request with fetch() and a JSON content type.")
        if not self.tokens.enabled or self._public(path):
            return None
        if self.tokens.accepts(self._bearer(headers)):
            return None
        query = scope.get("query_string", b"").decode("latin-1")
        if path.startswith(MEDIA_PREFIX) and self.tokens.signed(path, query):
            return None
        # An EventSource cannot send headers: event streams take the token in the query.
        if path.startswith(EVENTS_PREFIX):
            token = parse_qs(query).get("access_token", [None])[0]
            if self.tokens.accepts(token):
                return None
        return _json(401, "unauthorized", "this request needs a valid API token",
                     "Send Authorization: Bearer <token> (a token of TGDL_API_TOKEN or "
                     "TGDL_API_TOKENS); "
                     "/media/ links from the API's answers are signed and need none.",
                     {"WWW-Authenticate": "Bearer"})

    @staticmethod
    def _public(path: str) -> bool:
        return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)

    @staticmethod
    def _cross_site(headers: dict[str, str]) -> bool:
        """A browser's request that a page of another site could have sent without a
        preflight: no JSON body and no token. A browser marks its requests with Origin
        or Sec-Fetch-Site; a program (the CLI, curl) sends neither and is not at risk."""
        if "authorization" in headers:
            return False
        kind = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if kind == "application/json":
            return False  # cross-site, that needs a preflight, which this server never allows
        return "origin" in headers or "sec-fetch-site" in headers

    def _capped(self, headers: dict[str, str], receive: Receive) -> Receive:
        limit, seen = self.limits.max_body_bytes, 0

        async def capped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:  # a body sent without Content-Length (chunked)
                    raise BodyTooLarge(limit)
            return message
        return capped


async def _send(send: Send, status: int, body: bytes, headers: list) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
