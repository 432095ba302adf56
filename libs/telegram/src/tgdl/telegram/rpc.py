"""Telethon's exceptions in the words of `tgdl.telegram.errors`: flood waits, permanent
failures with a reason and a suggestion, and what is worth retrying."""

from __future__ import annotations

from telethon import errors

from tgdl.contracts.errors import ErrorCode
from tgdl.telegram.errors import FloodWait, PermanentError, TelegramError, TransientError

_ACCESS_DENIED: tuple[type[Exception], ...] = (
    errors.ChannelPrivateError,
    errors.ChatForbiddenError,
    errors.ChatAdminRequiredError,
    errors.UserBannedInChannelError,
    errors.ChannelBannedError,
    errors.ChatRestrictedError,
    errors.ChannelPublicGroupNaError,
    errors.ForbiddenError,  # any other 403
)
_NOT_FOUND: tuple[type[Exception], ...] = (
    errors.UsernameInvalidError,
    errors.UsernameNotOccupiedError,
    errors.ChannelInvalidError,
    errors.PeerIdInvalidError,
    errors.MsgIdInvalidError,
    errors.MessageIdInvalidError,
)
_FILE_GONE: tuple[type[Exception], ...] = (
    errors.FileIdInvalidError,
    errors.LocationInvalidError,
    errors.MediaEmptyError,
    errors.FileReferenceEmptyError,
)
REFERENCE_EXPIRED: tuple[type[Exception], ...] = (
    errors.FileReferenceExpiredError,
    errors.FileReferenceInvalidError,
    errors.FilerefUpgradeNeededError,
)
_TRANSIENT: tuple[type[Exception], ...] = (
    errors.ServerError,  # 5xx, RPC_CALL_FAIL and friends
    errors.TimedOutError,
    errors.InvalidDCError,  # a migrate Telethon did not follow: try again
    OSError,  # ConnectionError, TimeoutError (asyncio's too), socket errors
)


# Telegram's name for each error class ("CHANNEL_PRIVATE"), for details people can search.
_RPC_NAMES: dict[type, str] = {
    **{cls: name for name, cls in errors.rpcerrorlist.rpc_errors_dict.items()},
    **{cls: pattern.replace("_(\\d+)", "") for pattern, cls in errors.rpcerrorlist.rpc_errors_re},
}


def rpc_name(exc: BaseException) -> str:
    if type(exc) in _RPC_NAMES:
        return _RPC_NAMES[type(exc)]
    return getattr(exc, "message", None) or type(exc).__name__


def as_telegram_error(exc: BaseException, *, resolving: bool) -> TelegramError:
    """Turn whatever Telethon raised into the port's vocabulary. `resolving`: the error
    came while finding the chat or message (a ValueError then means "no such chat")."""
    if isinstance(exc, TelegramError):
        return exc
    if isinstance(exc, errors.FloodError):
        seconds = getattr(exc, "seconds", None)
        if seconds is None:
            return TransientError(f"Telegram flood limit without a wait time ({rpc_name(exc)})")
        return FloodWait(max(int(seconds), 1), f"Telegram asked to wait {seconds} s "
                                                f"({rpc_name(exc)})")
    if isinstance(exc, _ACCESS_DENIED):
        return PermanentError.of(ErrorCode.access_denied,
                                 f"Telegram refused access to the chat ({rpc_name(exc)})")
    if isinstance(exc, _NOT_FOUND) or (resolving and isinstance(exc, ValueError)):
        return PermanentError.of(ErrorCode.message_not_found,
                                 f"Telegram does not know this chat or message ({exc})")
    if isinstance(exc, errors.UnauthorizedError | errors.AuthKeyDuplicatedError):
        # AUTH_KEY_DUPLICATED: one session was used by two processes at once; Telegram
        # then revokes it. Every replica needs a session of its own.
        return PermanentError.of(
            ErrorCode.access_denied,
            f"the Telegram session is no longer authorized ({rpc_name(exc)}); "
            "run `tgdl login` again")
    if isinstance(exc, _FILE_GONE):
        return PermanentError.of(ErrorCode.message_deleted,
                                 f"Telegram no longer serves this file ({rpc_name(exc)})")
    if isinstance(exc, _TRANSIENT):
        return TransientError(f"{type(exc).__name__}: {exc}".strip(": "))
    if isinstance(exc, errors.BadRequestError):
        return PermanentError.of(ErrorCode.internal,
                                 f"Telegram rejected the request ({rpc_name(exc)})")
    if isinstance(exc, errors.RPCError):
        return TransientError(f"Telegram error {exc.code} {rpc_name(exc)}")
    return TransientError(f"unexpected {type(exc).__name__}: {exc}")
