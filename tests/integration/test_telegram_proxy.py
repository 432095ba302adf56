"""TGDL_TELEGRAM_PROXY through Telethon's real connections: a SOCKS5 proxy relays the
client's own connection and the parallel ones that fetch file parts to the data center;
an MTProxy is spoken to with its secret and told which data center. The data center here
is a local socket that notes what reaches it (no MTProto answer is needed for that)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fakes.socks5 import Socks5Proxy
from telethon.crypto import AESModeCTR, AuthKey
from telethon.sessions import StringSession

from tgdl.telegram.client import TelegramSettings, build_client, write_session
from tgdl.telegram.senders import open_sender

# Telethon's receive loop of a connection cut before its first answer is collected while
# it still closes its writer: a warning of Telethon's teardown, not of the proxy setting.
# Collected here (see `collected`), so it is not reported against a later test.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

HOME_DC = 2
SECRET = "dd" + "0123456789abcdef" * 2


class DataCenter:
    """A local socket standing in for a data center (or an MTProxy): it keeps what each
    connection sent first."""

    def __init__(self) -> None:
        self.first_bytes: list[bytes] = []
        self.arrived = asyncio.Condition()
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            data = await reader.readexactly(64)
            async with self.arrived:
                self.first_bytes.append(data)
                self.arrived.notify_all()
            await reader.read()  # held open, never answered, until the client goes
        writer.close()

    async def until_connections(self, n: int) -> None:
        async with asyncio.timeout(10), self.arrived:
            await self.arrived.wait_for(lambda: len(self.first_bytes) >= n)


@pytest.fixture(autouse=True)
def collected():
    yield
    gc.collect()


@pytest.fixture
async def data_center() -> AsyncIterator[DataCenter]:
    dc = DataCenter()
    server = await asyncio.start_server(dc._serve, "127.0.0.1", 0)
    dc.port = server.sockets[0].getsockname()[1]
    try:
        yield dc
    finally:
        server.close()


def account(tmp_path: Path, dc_port: int, proxy: str) -> TelegramSettings:
    """An account whose session names the local data center (and has a key, so no key
    exchange happens before the first request)."""
    session = StringSession()
    session.set_dc(HOME_DC, "127.0.0.1", dc_port)
    session.auth_key = AuthKey(os.urandom(256))
    path = tmp_path / "telegram.session"
    write_session(path, session.save())
    return TelegramSettings(api_id=1, api_hash="0" * 32, session_file=path,
                            telegram_proxy=proxy)


@contextlib.asynccontextmanager
async def in_background(*steps) -> AsyncIterator[None]:
    """Run steps that wait for an answer the data center never gives; stop them after."""
    tasks = [asyncio.ensure_future(step) for step in steps]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_every_connection_goes_through_the_socks5_proxy(tmp_path, data_center):
    async with Socks5Proxy(username="me", password="p@ss word") as proxy:
        settings = account(tmp_path, data_center.port,
                           f"socks5://me:p%40ss%20word@127.0.0.1:{proxy.port}")
        client = build_client(settings)
        async with in_background(client.connect()):
            await data_center.until_connections(1)
            # a connection of the pool that fetches file parts in parallel
            async with in_background(open_sender(client, HOME_DC)):
                await data_center.until_connections(2)
            await client.disconnect()
    assert proxy.connects == [("127.0.0.1", data_center.port)] * 2
    assert proxy.logins == [("me", "p@ss word")] * 2


async def test_a_proxy_that_refuses_the_login_is_a_connection_error(tmp_path, data_center):
    async with Socks5Proxy(username="me", password="right") as proxy:
        client = build_client(account(tmp_path, data_center.port,
                                      f"socks5://me:wrong@127.0.0.1:{proxy.port}"))
        client._connection_retries = 0  # as many as the downloader's back-off wants
        try:
            with pytest.raises(ConnectionError):
                await asyncio.wait_for(client.connect(), 10)
        finally:
            await client.disconnect()
    assert proxy.connects == [] and data_center.first_bytes == []


async def test_an_mtproxy_is_spoken_to_with_its_secret_and_told_the_data_center(
        tmp_path, data_center):
    # The MTProxy is the local socket: the session's own address is never dialled.
    settings = account(tmp_path, 9, f"https://t.me/proxy?server=127.0.0.1&port="
                                    f"{data_center.port}&secret={SECRET}")
    client = build_client(settings)
    async with in_background(client.connect()):
        await data_center.until_connections(1)
        await client.disconnect()
    header = data_center.first_bytes[0]
    # What an MTProxy checks: the header decrypts, with a key made of the secret, to the
    # protocol's tag (dd: random padding) and the data center wanted.
    secret = bytes.fromhex(SECRET[2:])
    key = hashlib.sha256(header[8:40] + secret).digest()
    plain = AESModeCTR(key, header[40:56]).decrypt(header)
    assert plain[56:60] == b"\xdd" * 4
    assert int.from_bytes(plain[60:62], "little", signed=True) == HOME_DC
