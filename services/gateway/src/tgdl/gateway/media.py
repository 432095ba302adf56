"""Finished files under the media root, at /media/<relative path>."""

from __future__ import annotations

from pathlib import PurePosixPath

from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from tgdl.contracts.paths import PART_SUFFIX


class MediaFiles(StaticFiles):
    """Never a partial download (``*.part``), never a hidden file, never anything
    outside the media root (StaticFiles resolves the path and checks it stays inside)."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        parts = PurePosixPath(path).parts
        if path.endswith(PART_SUFFIX) or any(p.startswith(".") for p in parts):
            raise HTTPException(404, "no such file")
        return await super().get_response(path, scope)

    async def check_config(self) -> None:
        try:
            await super().check_config()
        except RuntimeError:  # no media root yet (nothing downloaded): nothing to serve
            raise HTTPException(404, "no such file") from None
