"""Finished files under the media root, at /media/<relative path>."""

from __future__ import annotations

from pathlib import PurePosixPath
from urllib.parse import quote

from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from tgdl.contracts.config import chat_key
from tgdl.contracts.paths import PART_SUFFIX, message_id_of
from tgdl.gateway.errors import ApiError

# Shown in the browser; anything else (HTML, SVG, scripts: a Telegram file may be named
# anything) is a download, so it can never run on the API's origin.
INLINE_KINDS = ("image/", "audio/", "video/")
NOT_INLINE = ("image/svg+xml",)


class MediaFiles(StaticFiles):
    """Never a partial download (``*.part``), never a hidden file, never anything
    outside the media root (StaticFiles resolves the path and checks it stays inside)."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        parts = PurePosixPath(path).parts
        if path.endswith(PART_SUFFIX) or any(p.startswith(".") for p in parts):
            raise _no_such_file(path)
        if not await self._chat_allowed(parts, scope):
            raise _no_such_file(path)  # not even whether it exists
        try:
            response = await super().get_response(path, scope)
        except HTTPException as exc:
            if exc.status_code == 404:
                raise _no_such_file(path) from None
            if exc.status_code == 401:  # Starlette's word for a file it may not read
                raise _unreadable(path, "permission denied") from None
            raise
        except OSError as exc:  # the disk or the folder failing, not the request
            raise _unreadable(path, exc.strerror or type(exc).__name__) from None
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
        kind = (response.media_type or "").split(";", 1)[0].strip().lower()
        if not kind.startswith(INLINE_KINDS) or kind in NOT_INLINE:
            name = quote(PurePosixPath(path).name, safe="")
            response.headers["Content-Disposition"] = f"attachment; filename*=UTF-8''{name}"
        return response

    @staticmethod
    async def _chat_allowed(parts: tuple[str, ...], scope: Scope) -> bool:
        """With an allow-list, a file is served only if its message (the number its
        name starts with, see tgdl.contracts.paths) is in an allowed chat."""
        svc = scope["app"].state.services
        # A signed link was handed out for this very file; a token may be limited.
        chats = await svc.readable(scope["state"].get("tgdl_chats"))
        if chats is None:
            return True
        message_id = message_id_of(parts[-1]) if parts else None
        if message_id is None:
            return False
        chat = await svc.pool.fetchval("SELECT chat FROM catalog WHERE message_id = $1",
                                       message_id)
        return chat is not None and chat_key(chat) in chats

    async def check_config(self) -> None:
        try:
            await super().check_config()
        except RuntimeError:  # no media root yet (nothing downloaded): nothing to serve
            raise _no_such_file("") from None


def _unreadable(path: str, why: str) -> ApiError:
    return ApiError(503, "storage_unavailable",
                    f"the gateway cannot read /media/{path} in the media folder: {why}",
                    "Check that the user running tgdl may read the media folder "
                    "(TGDL_MEDIA_ROOT) and that its disk is healthy.",
                    extra={"unavailable": "media_root"})


def _no_such_file(path: str) -> ApiError:
    """One answer for a file that is missing, unfinished, hidden or not the caller's."""
    return ApiError(404, "not_found", f"no finished download at /media/{path}",
                    "Use the download_url of a completed file, from its batch's status "
                    "(GET /api/media/batch-status/{batch_id}); a file still downloading "
                    "is served once it completes.")
