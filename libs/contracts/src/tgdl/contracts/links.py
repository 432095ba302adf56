"""Telegram message links, as people copy them from an app ("Copy Message Link"), read as
the chat and the message's id in it, which is how the catalog knows a message.

    https://t.me/somechannel/1234            a public chat's message
    https://t.me/somechannel/77/1234         ... in a forum topic (77 is the topic)
    https://t.me/s/somechannel/1234          ... its web preview
    https://t.me/c/1234567890/1234           a private chat's message (-1001234567890)
    tg://resolve?domain=somechannel&post=1234, tg://privatepost?channel=1234567890&post=1234

telegram.me and telegram.dog are t.me's other names; the scheme may be left out, and a
query (?comment=...) or fragment does not change which message it is. A link to a message
of an album names the album (Telegram shows it whole), unless it ends in ?single.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

HOSTS = ("t.me", "telegram.me", "telegram.dog")
# Telegram usernames: 4-32 characters, a letter first (t.me's own paths are not chats).
_USERNAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{3,31}")
_NOT_CHATS = frozenset({"joinchat", "addstickers", "addemoji", "share", "proxy", "socks",
                        "setlanguage", "addlist", "login", "invoice", "boost", "bg"})
_ID = re.compile(r"[1-9][0-9]{0,18}")
_MAX_ID = 2**63 - 1


@dataclass(frozen=True)
class MessageLink:
    chat: str  # a username, or a private chat's marked id (-100...), as the catalog names it
    telegram_message_id: int
    # ?single: this message alone; without it, a link to a message of an album shows
    # (and names) the whole album, as in Telegram.
    single: bool = False


def looks_like_link(text: str) -> bool:
    """Whether `text` is meant as a link (and so is read as one, or refused as one)."""
    lowered = text.strip().lower()
    return lowered.startswith("tg://") or any(
        f"{host}/" in lowered for host in HOSTS)


def _number(text: str | None, what: str) -> int:
    if text is None or not _ID.fullmatch(text) or int(text) > _MAX_ID:
        raise ValueError(f"{what} {text!r} is not a number" if text else f"no {what}")
    return int(text)


def _chat(name: str) -> str:
    if not _USERNAME.fullmatch(name) or name.lower() in _NOT_CHATS:
        raise ValueError(f"{name!r} is not a chat's username")
    return name


def parse_link(text: str) -> MessageLink:
    """The message a link points at; ValueError saying what is wrong with it otherwise."""
    raw = text.strip()
    if raw.lower().startswith("tg://"):
        return _tg_scheme(raw)
    parts = urlsplit(raw if "://" in raw else f"https://{raw}")
    host = (parts.hostname or "").lower().removeprefix("www.")
    if parts.scheme.lower() not in ("http", "https") or host not in HOSTS:
        raise ValueError("not a t.me link")
    path = [p for p in parts.path.split("/") if p]
    if path[:1] == ["s"]:  # the web preview of a public chat
        path = path[1:]
    if path[:1] == ["c"]:
        if len(path) not in (3, 4):
            raise ValueError("a private chat's link is t.me/c/<chat>/<message>")
        chat = f"-100{_number(path[1], 'chat id')}"
    elif len(path) in (2, 3):
        chat = _chat(path[0])
    else:
        raise ValueError("a message's link is t.me/<chat>/<message>; this one names no "
                         "message (a chat's or an invite's link?)")
    return MessageLink(chat, _number(path[-1], "message id"), _single(parts.query))


def _single(query: str) -> bool:
    return "single" in parse_qs(query, keep_blank_values=True)


def _tg_scheme(raw: str) -> MessageLink:
    parts = urlsplit(raw)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    what = (parts.netloc or parts.path.lstrip("/")).lower()
    if what == "resolve" and "domain" in query:
        return MessageLink(_chat(query["domain"]), _number(query.get("post"), "post"),
                           _single(parts.query))
    if what == "privatepost" and "channel" in query:
        return MessageLink(f"-100{_number(query['channel'], 'channel')}",
                           _number(query.get("post"), "post"), _single(parts.query))
    raise ValueError("a tg:// link to a message is tg://resolve?domain=<chat>&post=<message> "
                     "or tg://privatepost?channel=<chat>&post=<message>")
