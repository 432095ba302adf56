"""Telethon clients for the account: settings, the stored session, and the options every
client of the project is built with (so that every error reaches the caller), and the
interactive login that creates the session."""

from __future__ import annotations

import getpass
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from telethon import TelegramClient
from telethon.sessions import StringSession

from tgdl.telegram.errors import TelegramSetupError
from tgdl.telegram.proxy import TelegramProxy, parse_proxy

log = logging.getLogger("tgdl.telegram")


class TelegramSettings(BaseSettings):
    """The Telegram account (shared by the downloader and the `tgdl` command)."""

    model_config = SettingsConfigDict(env_prefix="TGDL_", extra="ignore")

    api_id: int | None = None
    api_hash: str | None = None
    session_file: Path = Path(".tgdl/telegram.session")  # a StringSession, owner-only
    account: str = "default"  # replicas logged in to one account share its flood waits
    telegram_timeout: float = Field(default=60.0, gt=0)  # seconds for one request
    # Reach Telegram through this proxy (tgdl.telegram.proxy lists the forms); empty: direct.
    telegram_proxy: str = ""

    @field_validator("telegram_proxy")
    @classmethod
    def _usable_proxy(cls, text: str) -> str:
        parse_proxy(text)  # refused at startup, saying what is wrong
        return text

    @property
    def proxy(self) -> TelegramProxy | None:
        return parse_proxy(self.telegram_proxy)


# --- building a client -----------------------------------------------------------------------


def client_options(updates: bool = False, proxy: TelegramProxy | None = None
                   ) -> dict[str, Any]:
    """Options every client of the project is built with (see the module docstring);
    only the catalog service's client asks for updates (new messages in watched chats).
    With a proxy, every connection of the client goes through it."""
    return {
        "flood_sleep_threshold": 0,
        "raise_last_call_error": True,
        "request_retries": 2,  # server hiccups; beyond that the worker's back-off decides
        "receive_updates": updates,
        **(proxy.client_options() if proxy else {}),
    }


def api_credentials(settings: TelegramSettings) -> tuple[int, str]:
    missing = [
        name
        for name, value in (("TGDL_API_ID", settings.api_id), ("TGDL_API_HASH", settings.api_hash))
        if not value
    ]
    if missing:
        raise TelegramSetupError(
            f"Telegram API credentials are missing: set {' and '.join(missing)} "
            "(create them at https://my.telegram.org under 'API development tools')."
        )
    return int(settings.api_id), str(settings.api_hash)  # type: ignore[arg-type]


def read_session(path: Path) -> str:
    path = path.expanduser()
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        raise TelegramSetupError(
            f"No Telegram session at {path}: run `tgdl login` first "
            "(or point TGDL_SESSION_FILE at an existing session)."
        ) from None
    if not text:
        raise TelegramSetupError(f"The Telegram session {path} is empty: run `tgdl login`.")
    return text


def write_session(path: Path, session: str) -> None:
    """Store the session string readable by its owner only: it grants the whole account."""
    path = path.expanduser()
    folder = path.parent
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if folder.resolve() not in (Path.cwd().resolve(), Path.home().resolve()):
        os.chmod(folder, 0o700)  # never loosen (or tighten) a folder the user lives in
    temporary = folder / f".{path.name}.{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # a leftover temporary may have had other bits
        os.write(fd, session.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)


def build_client(
    settings: TelegramSettings,
    client_class: Callable[..., TelegramClient] = TelegramClient,
    updates: bool = False,
) -> TelegramClient:
    api_id, api_hash = api_credentials(settings)
    session = StringSession(read_session(settings.session_file))
    proxy = settings.proxy
    if proxy is not None:
        log.info("reaching Telegram through a %s", proxy)
    return client_class(session, api_id, api_hash, **client_options(updates, proxy))


# --- login -----------------------------------------------------------------------------------


async def login(
    settings: TelegramSettings,
    ask: Callable[[str], str] = input,
    ask_secret: Callable[[str], str] = getpass.getpass,
    client: TelegramClient | None = None,
) -> Path:
    """Log in interactively (phone, code, then the 2FA password if the account has one)
    and store the session. An existing, still valid session is kept as is."""
    api_id, api_hash = api_credentials(settings)
    path = settings.session_file.expanduser()
    if client is None:
        client = TelegramClient(_stored_session(path), api_id, api_hash,
                                **client_options(proxy=settings.proxy))
    try:
        await client.start(
            phone=lambda: ask("Phone number (international format, e.g. +441234567890): "),
            code_callback=lambda: ask("Login code sent by Telegram: "),
            password=lambda: ask_secret("Two-step verification password: "),
            max_attempts=3,
        )
        write_session(path, client.session.save())
    finally:
        await client.disconnect()
    return path


def _stored_session(path: Path) -> StringSession:
    """The session to continue from: the stored one if it is readable, else a new one."""
    try:
        return StringSession(path.read_text().strip() or None)
    except (OSError, ValueError):
        return StringSession()
