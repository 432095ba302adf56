"""Chats: how the catalog names them and how Telethon is given them."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from telethon import TelegramClient, utils


def chat_ref(chat: str) -> str | int:
    """A catalog chat as Telethon wants it: marked numeric ids as int, names as text."""
    text = chat.strip()
    return int(text) if re.fullmatch(r"-?\d+", text) else text


class PeerResolver:
    """Chat -> input peer. Usernames resolve over the network; a numeric id needs its
    access hash, which a fresh StringSession does not have until the account's dialogs
    were listed once (done lazily, once per client)."""

    def __init__(self, client: TelegramClient) -> None:
        self._client = client
        self._dialogs_loaded = False
        self._lock = asyncio.Lock()

    async def input_peer(self, chat: str) -> Any:
        ref = chat_ref(chat)
        try:
            return await self._client.get_input_entity(ref)
        except ValueError:
            if not isinstance(ref, int) or self._dialogs_loaded:
                raise
        async with self._lock:
            if not self._dialogs_loaded:
                await self._client.get_dialogs(limit=None)
                self._dialogs_loaded = True
        return await self._client.get_input_entity(ref)


def catalog_chat(chat: str, peer: Any) -> str:
    """How the catalog names a chat: its public username when it was given by one, else
    its marked numeric id (what Telethon accepts back in both cases)."""
    ref = chat_ref(chat)
    if isinstance(ref, str) and not utils.parse_phone(ref):
        username, is_invite = utils.parse_username(ref)
        if username and not is_invite:
            return username
    return str(utils.get_peer_id(peer))
