"""How parallel 1 MiB parts speed a file up, measured against the bandwidth ideal.

Run by `make bench` after the pipeline scenarios (or alone: python benchmarks/bench_parts.py).
Three measurements, ratios only:

1. one large file with 1, 2, 4 and 8 parts in flight, the simulated Telegram pacing every
   connection at 4 MB/s under a 32 MB/s account cap: each run against its ideal
   (size / min(parts x 4 MB/s, 32 MB/s)) and against one part;
2. a batch of 10 files at max_concurrent 3 with the default parts and connection pool;
3. CPU seconds per GiB on the Telethon path: MTProto messages carrying `upload.File`
   encrypted here as Telegram's servers do, then decrypted (Telethon's MTProtoState,
   cryptg), parsed and written as parts; only the receiving side is timed.

The issue's sizes (200 MiB, 10 x 50 MiB) take minutes at these speeds; by default the files
are smaller (same speeds, so the same ratios) to keep `make bench` short. Pass --full for
the issue's sizes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import sys
import tempfile
import time
from collections import defaultdict
from hashlib import sha256
from pathlib import Path

from bench_pipeline import MB, Measured, Servers, console, measure, pipeline
from rich import box
from rich.table import Table
from telethon.crypto import AES, AuthKey
from telethon.network.mtprotostate import MTProtoState
from telethon.tl import types

from tgdl.downloader.files import PartFile
from tgdl.downloader.parts import parts_for
from tgdl.downloader.telegram.port import PART_SIZE
from tgdl.simtelegram.settings import SimSettings
from tgdl.telegram.crypto import aes_backend

MiB = 1024 * 1024
PER_CONNECTION = 4 * MB
ACCOUNT_CAP = 32 * MB
SIM = SimSettings(bandwidth=PER_CONNECTION, latency=0.05, account_bandwidth=ACCOUNT_CAP)
FULL = "--full" in sys.argv


def ideal_one_file(size: int, parts: int) -> float:
    """Resolve and first answer each take a latency; then the bytes at the allowed rate."""
    return 2 * SIM.latency + size / min(parts * PER_CONNECTION, ACCOUNT_CAP)


async def one_file(servers: Servers, size: int) -> list[Measured]:
    results = []
    for parts in (1, 2, 4, 8):
        options = {"parts_per_file": parts, "connections_per_dc": 8}
        async with pipeline(servers, SIM, [size], slots=1, downloader=options) as bench:
            results.append(await measure(f"{parts} part{'s' * (parts > 1)}", bench, [[1]], 1,
                                         ideal_one_file(size, parts)))
    return results


async def batch(servers: Servers, count: int, size: int) -> Measured:
    """Default parts per file and the default pool of 4 connections for the account."""
    rate = min(4 * PER_CONNECTION, ACCOUNT_CAP)
    ideal = 2 * SIM.latency + count * size / rate
    async with pipeline(servers, SIM, [size] * count, slots=4) as bench:
        return await measure(f"{count} x {size // MiB} MiB, max_concurrent 3", bench,
                             [list(bench.sizes)], 3, ideal)


# --- CPU per GiB through Telethon's MTProto layer --------------------------------------------


class _Server:
    """Encrypts answers for one client session as Telegram's servers do (MTProto 2.0,
    server to client: x = 8)."""

    def __init__(self, key: AuthKey, session_id: int) -> None:
        self.key = key
        self.session_id = session_id
        self.msg_id = (int(time.time()) << 32) | 1

    def encrypt(self, obj: bytes) -> bytes:
        self.msg_id += 4  # odd and growing, as server message ids are
        data = struct.pack("<qqqii", 0, self.session_id, self.msg_id, 1, len(obj)) + obj
        padding = os.urandom(-(len(data) + 12) % 16 + 12)
        msg_key = sha256(self.key.key[96:128] + data + padding).digest()[8:24]
        aes_key, aes_iv = MTProtoState._calc_key(self.key.key, msg_key, False)
        return (struct.pack("<Q", self.key.key_id) + msg_key
                + AES.encrypt_ige(data + padding, aes_key, aes_iv))


def cpu_per_gib(total: int) -> tuple[float, float]:
    """(CPU seconds per GiB, MiB/s on one core) to decrypt, parse and store `total` bytes
    of 1 MiB parts."""
    key = AuthKey(os.urandom(256))
    client = MTProtoState(key, loggers=defaultdict(lambda: logging.getLogger("bench")))
    server = _Server(key, client.id)
    count = total // PART_SIZE
    with tempfile.TemporaryDirectory(prefix="tgdl-bench-cpu-") as folder:
        file = PartFile(Path(folder) / "f.bin", count * PART_SIZE, PART_SIZE)
        file.open()
        cpu = wall = 0.0
        payload = os.urandom(PART_SIZE)
        try:
            for index in range(count):
                answer = bytes(types.upload.File(type=types.storage.FilePartial(), mtime=0,
                                                 bytes=payload))
                wire = server.encrypt(answer)
                cpu0, wall0 = time.process_time(), time.perf_counter()
                message = client.decrypt_message_data(wire)
                file.write(index, message.obj.bytes)
                cpu += time.process_time() - cpu0
                wall += time.perf_counter() - wall0
            file.commit()
        finally:
            file.close()
    return cpu / (total / 2**30), total / MiB / cpu


# --- report ----------------------------------------------------------------------------------


def table(title: str, rows: list[Measured], first: Measured | None) -> Table:
    t = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    for name in ("run", "MB/s", "wall", "ideal", "of ideal", "vs 1 part", "CPU"):
        t.add_column(name, justify="left" if name == "run" else "right")
    for m in rows:
        t.add_row(m.label, f"{m.mb_per_s:.1f}", f"{m.wall:.1f} s",
                  f"{m.ideal:.1f} s" if m.ideal else "-",
                  f"{m.ideal / m.wall:.2f}" if m.ideal else "-",
                  f"{first.wall / m.wall:.2f}x" if first else "-", f"{m.cpu:.2f}")
    return t


async def parts(servers: Servers) -> None:
    one_size = 200 * MiB if FULL else 40 * MiB
    count, size = (10, 50 * MiB) if FULL else (10, 10 * MiB)
    console.print(
        f"\nparallel parts: {PER_CONNECTION // MB} MB/s per connection, account cap "
        f"{ACCOUNT_CAP // MB} MB/s, latency {SIM.latency * 1000:.0f} ms; AES: {aes_backend()}"
        + ("" if FULL else "; smaller files than the issue's (--full for 200 MiB, 10 x 50 MiB)"))
    single = await one_file(servers, one_size)
    console.print(table(f"one {one_size // MiB} MiB file", single, single[0]))
    many = await batch(servers, count, size)
    console.print(table(f"a batch, default parts ({parts_for(size)} per file) and pool (4)",
                        [many], None))
    per_gib, rate = cpu_per_gib((1024 if FULL else 256) * MiB)
    console.print(f"decrypt + parse + store through Telethon's MTProto layer: "
                  f"{per_gib:.2f} CPU s per GiB ({rate:.0f} MiB/s on one core)")


async def _alone() -> None:
    import shutil

    from tgdl.launcher.embedded import start_nats, start_postgres

    scratch = Path(tempfile.mkdtemp(prefix="tgdl-bench-"))
    nats_server = pg = None
    try:
        nats_server = start_nats(scratch / "nats")
        pg = start_postgres(scratch / "pg")
        began = time.perf_counter()
        await parts(Servers(nats_server.url, pg.url, scratch))
        console.print(f"\nparts scenarios: {time.perf_counter() - began:.0f} s")
    finally:
        if nats_server:
            nats_server.stop()
        if pg:
            pg.stop()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(_alone())
