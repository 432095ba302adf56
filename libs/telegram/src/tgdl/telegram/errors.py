"""What can go wrong when fetching from Telegram, in words every adapter uses (the real
account's and the simulated Telegram's alike); the downloader decides what each means."""

from __future__ import annotations

from tgdl.contracts.errors import ErrorCode, Failure


class TelegramError(Exception):
    """Base of everything an adapter raises."""


class PermanentError(TelegramError):
    """Retrying cannot help (deleted message, no media, no access)."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.detail)
        self.failure = failure

    @classmethod
    def of(cls, code: ErrorCode, detail: str) -> PermanentError:
        return cls(Failure.of(code, detail))


class FloodWait(TelegramError):
    """Telegram asks the whole account to hold off for `seconds`."""

    def __init__(self, seconds: int, detail: str = "") -> None:
        super().__init__(detail or f"flood wait of {seconds} s")
        self.seconds = seconds


class TransientError(TelegramError):
    """A timeout, a dropped connection, a server hiccup: retry with back-off."""


class TelegramSetupError(RuntimeError):
    """The account cannot be used at all: missing credentials or session, not logged in."""
