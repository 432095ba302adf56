"""Which AES-256-IGE implementation Telethon decrypts MTProto with. Every byte of a file
goes through it, so it bounds a downloader's speed: cryptg (C) decrypts about 40 times
faster than Telethon's libssl ctypes fallback, and the pure-Python one is slower still."""

from __future__ import annotations

from typing import Literal

from telethon.crypto import aes, libssl

Backend = Literal["cryptg", "libssl", "python"]


def aes_backend() -> Backend:
    """The backend Telethon picked when it was imported (`telethon.crypto.aes`)."""
    if aes.cryptg is not None:
        return "cryptg"
    if libssl.decrypt_ige and libssl.encrypt_ige:
        return "libssl"
    return "python"
