"""The simulated Telegram as its own process, serving the bench's catalog.

    python benchmarks/simproc.py SIZES.json     (pacing and port from TGDL_SIM_*)

SIZES.json is a list of byte sizes: message i+1 is a document of sizes[i] bytes. The
demo catalog of `python -m tgdl.simtelegram` mixes kinds, sizes and faults; a bench needs
exactly the files it asks for.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tgdl.contracts.catalog import MediaKind
from tgdl.runtime import serve_http
from tgdl.simtelegram.catalog import SimMessage
from tgdl.simtelegram.server import create_app
from tgdl.simtelegram.settings import SimSettings

CHAT = "bench"


def catalog_of(sizes: Sequence[int]) -> list[SimMessage]:
    """One document per size, ids 1..n, in a chat of its own."""
    start = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)
    return [
        SimMessage(message_id=i, chat=CHAT, telegram_message_id=1000 + i,
                   media_kind=MediaKind.document, file_name=f"bench-{i:05d}.bin",
                   mime_type="application/octet-stream", size=size,
                   date=start + timedelta(seconds=i), dc_id=2)
        for i, size in enumerate(sizes, start=1)
    ]


def main() -> None:
    settings = SimSettings()
    sizes = json.loads(Path(sys.argv[1]).read_text())
    serve_http(create_app(settings, catalog_of(sizes)), settings.host, settings.port,
               log_level="warning")


if __name__ == "__main__":
    main()
