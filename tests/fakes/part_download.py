"""A process that downloads one file in parallel parts through Telethon's client and the
scripted Telegram, then hangs on two parts so that a test can kill it with SIGKILL:

    python -m fakes.part_download FINAL SIZE SEED

The bytes are `content(SIZE, SEED)` (deterministic), so another process can finish the
file against a server of its own holding the same bytes.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from fakes.telegram_server import MiB, TelegramServer, content
from tgdl.contracts.catalog import CatalogEntry
from tgdl.downloader.files import PartFile
from tgdl.downloader.parts import fetch_parts
from tgdl.downloader.telegram.port import PART_SIZE
from tgdl.downloader.telegram.telethon import TelethonTelegram
from tgdl.telegram.client import client_options

HANGING = (0, 2 * MiB)  # parts 0 and 2 never come: the others finish around them


def serve(size: int, seed: str, hang: bool) -> tuple[TelegramServer, CatalogEntry]:
    server = TelegramServer()
    news = server.add_channel("news")
    telegram_id = server.post_document(news, content(size, seed), file_name=f"{seed}.bin")
    if hang:
        for offset in HANGING:
            server.hang_file_at(offset)
    return server, CatalogEntry(message_id=telegram_id, chat="news",
                                telegram_message_id=telegram_id, size=size)


async def download(server: TelegramServer, entry: CatalogEntry, final: Path) -> None:
    """What the worker does with a file: parts of it, 4 at a time, into its .part."""
    client = server.client(server.logged_in_session(), **client_options())
    port = TelethonTelegram(client, request_timeout=60.0)
    await port.start()
    try:
        media = await port.resolve(entry)
        file = PartFile(final, media.size, PART_SIZE)
        file.open()
        try:
            async with port.parts(media) as source:
                async def stored(nbytes: int) -> None:
                    pass
                await fetch_parts(source, file, 4, stored)
            file.commit()
        finally:
            file.close()
    finally:
        await port.close()


def main() -> None:
    final, size, seed = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    server, entry = serve(size, seed, hang=True)
    asyncio.run(download(server, entry, final))


if __name__ == "__main__":
    main()
