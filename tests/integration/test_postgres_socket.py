"""Only the embedded PostgreSQL's owner reaches its socket (before even a password is asked):
the socket's folder is the server's alone, also where pgserver puts it outside the data
folder (a long data path)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import asyncpg

from tgdl.launcher.embedded import start_postgres


async def test_the_socket_folder_is_the_servers_alone(tmp_path: Path):
    data = tmp_path / ("long-" * 20) / "pg"  # too long for a socket path: elsewhere
    pg = start_postgres(data)
    try:
        folder = Path(parse_qs(urlsplit(pg.url).query)["host"][0])
        assert not folder.is_relative_to(data)
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert folder.stat().st_uid == data.stat().st_uid
        if os.geteuid() == 0 or folder.stat().st_uid == os.geteuid():
            conn = await asyncpg.connect(pg.url)  # its owner (and root) still log in
            assert await conn.fetchval("SELECT 1") == 1
            await conn.close()
    finally:
        pg.stop()
