"""The proxy the account reaches Telegram through (TGDL_TELEGRAM_PROXY), where Telegram is
blocked or slow: a SOCKS5, SOCKS4 or HTTP proxy, or an MTProxy, written as people share
them.

    socks5://[user:password@]host:port      socks4://host:port      http://host:port
    https://t.me/socks?server=host&port=1080&user=u&pass=p   (tg://socks?... too)
    https://t.me/proxy?server=host&port=443&secret=dd0123...  (tg://proxy?... too): MTProxy

Every connection of the account goes through it: the client's own, the parallel ones that
fetch file parts, and those to other data centers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

FORMS = ("socks5://[user:password@]host:port, socks4://host:port, http://host:port, or a "
         "shared link: https://t.me/socks?server=...&port=... or (MTProxy) "
         "https://t.me/proxy?server=...&port=...&secret=...")
_SCHEMES = {"socks5": "socks5", "socks5h": "socks5", "socks4": "socks4", "socks4a": "socks4",
            "http": "http"}


@dataclass(frozen=True)
class TelegramProxy:
    kind: Literal["socks5", "socks4", "http", "mtproxy"]
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    secret: str | None = None  # an MTProxy's, as hex (a dd secret keeps its dd)

    def client_options(self) -> dict[str, Any]:
        """What Telethon's client takes for it (`TelegramClient(..., **options)`)."""
        if self.kind == "mtproxy":
            from telethon.network.connection import (
                ConnectionTcpMTProxyRandomizedIntermediate,
            )

            openssl_ctr()
            # Randomized intermediate speaks to plain and dd secrets alike.
            return {"connection": ConnectionTcpMTProxyRandomizedIntermediate,
                    "proxy": (self.host, self.port, self.secret)}
        return {"proxy": {"proxy_type": self.kind, "addr": self.host, "port": self.port,
                          "username": self.username, "password": self.password,
                          "rdns": True}}

    def __str__(self) -> str:  # for logs: never the password or the secret
        return f"{self.kind} proxy {self.host}:{self.port}"


def parse_proxy(text: str) -> TelegramProxy | None:
    """The proxy `text` names (None when empty); ValueError saying what is wrong. The
    message never repeats a password or a secret."""
    text = text.strip()
    if not text:
        return None
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme == "tg" or (scheme in ("http", "https") and host in ("t.me", "www.t.me")
                          and parts.path.strip("/") in ("proxy", "socks")):
        return _shared_link(parts)
    if scheme not in _SCHEMES:
        said = f"{scheme}:// is not a kind of proxy tgdl knows" if "://" in text else \
            "no kind of proxy given"
        raise ValueError(f"{said}; use {FORMS}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise ValueError(f"a {scheme} proxy needs a host and a port, e.g. "
                         f"{scheme}://127.0.0.1:1080")
    return TelegramProxy(_SCHEMES[scheme], parts.hostname, port,
                         unquote(parts.username) if parts.username else None,
                         unquote(parts.password) if parts.password else None)


def _shared_link(parts) -> TelegramProxy:
    kind = (parts.netloc if parts.scheme.lower() == "tg" else parts.path.strip("/")).lower()
    query = {k.lower(): v[0] for k, v in parse_qs(parts.query).items()}
    server, port = query.get("server"), query.get("port", "")
    if kind not in ("proxy", "socks") or not server or not port.isdigit() \
            or not 0 < int(port) < 65536:
        raise ValueError(f"a shared proxy link needs a server and a port: {FORMS}")
    if kind == "socks":
        return TelegramProxy("socks5", server, int(port), query.get("user"), query.get("pass"))
    return TelegramProxy("mtproxy", server, int(port), secret=_mtproxy_secret(
        query.get("secret", "")))


def _mtproxy_secret(secret: str) -> str:
    secret = secret.strip().lower()
    if secret.startswith("ee"):
        raise ValueError("this MTProxy uses a fake-TLS secret (it starts with ee), which "
                         "Telethon cannot speak; ask for its dd secret, or use a SOCKS5 "
                         "proxy")
    body = secret.removeprefix("dd")
    if len(body) != 32 or any(c not in "0123456789abcdef" for c in body):
        raise ValueError("an MTProxy's secret is 32 hex digits, with dd before them for "
                         "random padding")
    return secret


class OpenSslCtr:
    """Telethon's AESModeCTR through OpenSSL. An MTProxy connection is AES-CTR end to
    end, and Telethon's own is pure Python: about 0.5 MB/s of one core, which would cap
    every download through an MTProxy at that. One instance is one direction's stream."""

    def __init__(self, key: bytes, iv: bytes) -> None:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        self._stream = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()

    def encrypt(self, data: bytes) -> bytes:
        return self._stream.update(data)

    decrypt = encrypt  # CTR: the same keystream either way


def openssl_ctr() -> None:
    """Telethon's obfuscated and MTProxy connections encrypt with `OpenSslCtr`."""
    from telethon.network.connection import tcpmtproxy, tcpobfuscated

    tcpmtproxy.AESModeCTR = tcpobfuscated.AESModeCTR = OpenSslCtr
