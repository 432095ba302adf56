"""Telethon must decrypt with cryptg: its libssl fallback caps a downloader at ~9 MiB/s."""

from __future__ import annotations

import os

import cryptg
from telethon.crypto import AES

from tgdl.telegram.crypto import aes_backend


def test_telethon_decrypts_with_cryptg():
    assert aes_backend() == "cryptg", (
        f"Telethon uses {aes_backend()} for AES-IGE: install the pinned cryptg"
    )


def test_telethon_aes_is_cryptgs():
    key, iv, data = os.urandom(32), os.urandom(32), os.urandom(64 * 1024)
    encrypted = AES.encrypt_ige(data, key, iv)
    assert encrypted == cryptg.encrypt_ige(data, key, iv)
    assert AES.decrypt_ige(encrypted, key, iv) == data
