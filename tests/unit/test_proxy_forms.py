"""TGDL_TELEGRAM_PROXY as people write it (URLs, shared t.me links), what Telethon is given
for it, and refusals that say what to write without repeating a password or a secret."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError
from telethon.crypto import AESModeCTR
from telethon.network.connection import ConnectionTcpMTProxyRandomizedIntermediate

from tgdl.contracts.config import settings_problems
from tgdl.telegram.client import TelegramSettings, client_options
from tgdl.telegram.proxy import OpenSslCtr, TelegramProxy, parse_proxy

SECRET = "dd" + "0123456789abcdef" * 2


@pytest.mark.parametrize(("text", "proxy"), [
    ("", None),
    ("socks5://127.0.0.1:1080", TelegramProxy("socks5", "127.0.0.1", 1080)),
    ("SOCKS5h://me:p%40ss@proxy.lan:1080", TelegramProxy("socks5", "proxy.lan", 1080, "me",
                                                         "p@ss")),
    ("socks4://10.0.0.1:1080", TelegramProxy("socks4", "10.0.0.1", 1080)),
    ("http://[::1]:3128", TelegramProxy("http", "::1", 3128)),
    ("https://t.me/socks?server=1.2.3.4&port=1080&user=u&pass=p",
     TelegramProxy("socks5", "1.2.3.4", 1080, "u", "p")),
    ("tg://socks?server=1.2.3.4&port=1080", TelegramProxy("socks5", "1.2.3.4", 1080)),
    (f"https://t.me/proxy?server=mt.example&port=443&secret={SECRET.upper()}",
     TelegramProxy("mtproxy", "mt.example", 443, secret=SECRET)),
    (f"tg://proxy?server=mt.example&port=443&secret={SECRET[2:]}",
     TelegramProxy("mtproxy", "mt.example", 443, secret=SECRET[2:])),
])
def test_the_forms_people_share(text: str, proxy: TelegramProxy | None):
    assert parse_proxy(text) == proxy


@pytest.mark.parametrize(("text", "why"), [
    ("127.0.0.1:1080", "no kind of proxy given; use socks5://"),
    ("localhost:1080", "no kind of proxy given; use socks5://"),
    ("ftp://h:21", "ftp:// is not a kind of proxy tgdl knows; use socks5://"),
    ("socks5://proxy.lan", "needs a host and a port, e.g. socks5://127.0.0.1:1080"),
    ("socks5://proxy.lan:99999", "needs a host and a port"),
    ("https://t.me/proxy?server=h&secret=" + SECRET, "needs a server and a port"),
    ("https://t.me/proxy?server=h&port=443&secret=ee" + "ab" * 16 + "676f6f676c652e636f6d",
     "fake-TLS secret (it starts with ee), which Telethon cannot speak"),
    ("https://t.me/proxy?server=h&port=443&secret=dd1234", "32 hex digits"),
])
def test_what_cannot_work_is_refused_saying_what_to_write(text: str, why: str):
    with pytest.raises(ValueError) as refused:
        parse_proxy(text)
    assert why in str(refused.value)


def test_a_refused_setting_never_repeats_its_password():
    with pytest.raises(ValidationError) as refused:
        TelegramSettings(telegram_proxy="socks5://me:hunter2@proxy.lan")
    [problem] = settings_problems(refused.value, TelegramSettings)
    assert problem.startswith("TGDL_TELEGRAM_PROXY: ") and "needs a host and a port" in problem
    assert "hunter2" not in problem


def test_what_telethon_is_given():
    assert "proxy" not in client_options() and "connection" not in client_options()
    socks = client_options(proxy=parse_proxy("socks5://me:pw@127.0.0.1:1080"))
    assert socks["proxy"] == {"proxy_type": "socks5", "addr": "127.0.0.1", "port": 1080,
                              "username": "me", "password": "pw", "rdns": True}
    assert socks["flood_sleep_threshold"] == 0  # the project's options stay
    mt = client_options(proxy=parse_proxy(f"tg://proxy?server=h&port=443&secret={SECRET}"))
    assert mt["connection"] is ConnectionTcpMTProxyRandomizedIntermediate
    assert mt["proxy"] == ("h", 443, SECRET)
    assert str(parse_proxy("socks5://me:pw@h:1")) == "socks5 proxy h:1"  # for logs


def test_openssl_ctr_is_telethons_ctr_stream_for_stream():
    key, iv = os.urandom(32), os.urandom(16)
    ours, theirs = OpenSslCtr(key, iv), AESModeCTR(key, iv)
    for size in (1, 15, 16, 64, 1000, 4096):  # a stream cut anywhere, as packets cut it
        data = os.urandom(size)
        assert ours.encrypt(data) == theirs.encrypt(data)
    assert OpenSslCtr(key, iv).decrypt(AESModeCTR(key, iv).encrypt(b"x" * 100)) == b"x" * 100
