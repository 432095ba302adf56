"""A downloader's memory does not grow with the size of the file: the real downloader
process (`python -m tgdl.downloader`, as `tgdl run` starts it) fetches a 10 MB file, then
a file 25 times larger, from an unpaced simulated Telegram (the most parts in flight); its
peak resident memory (VmHWM) after the large file stays within 30% of its peak after the
small one (a body kept past its part made it 67% more: 175 MB against 105), and within
12 MB of what it held idle: the large file has 16 parts in flight, each written piece by
piece as it arrives (held whole, they added 17-19 MB). Memory, not time: nothing here
depends on the machine's speed."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from sim_helpers import running_sim
from waiting import until

from tgdl.bus.leases import Leases
from tgdl.bus.topology import QueuePolicy, ensure_topology
from tgdl.contracts.catalog import MediaKind
from tgdl.contracts.config import CommonSettings
from tgdl.contracts.jobs import DownloadJob, DownloadOutcome
from tgdl.simtelegram.catalog import SimMessage
from tgdl.simtelegram.settings import SimSettings

MB, MiB = 1_000_000, 2**20
SMALL, LARGE = 10 * MB, 250 * MiB
UNPACED = SimSettings(bandwidth=0, latency=0.0)


def rss(pid: int, key: str = "VmHWM:") -> int:
    """The peak resident bytes of the process's life (VmHWM), or now (VmRSS:)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key}")


async def test_peak_memory_stays_flat_from_a_small_file_to_a_large_one(servers, isolation, nc,
                                                                         tmp_path):
    catalog = [SimMessage(message_id=m, chat="mem", telegram_message_id=m,
                          media_kind=MediaKind.document, file_name=f"f{m}.bin",
                          mime_type="application/octet-stream", size=size,
                          date=datetime(2025, 1, 1, tzinfo=UTC), dc_id=2)
               for m, size in ((1, SMALL), (2, LARGE))]
    env = isolation.env(servers)
    names = CommonSettings(namespace=isolation.namespace).names
    js = nc.jetstream()
    await ensure_topology(js, names, QueuePolicy())
    leases = await Leases.open(js, names)
    outcomes: dict[str, DownloadOutcome] = {}

    async def on_done(msg) -> None:
        o = DownloadOutcome.model_validate_json(msg.data)
        outcomes[o.job_id] = o
    sub = await nc.subscribe(names.all_file_done, cb=on_done)
    log = tmp_path / "downloader.log"
    async with running_sim(UNPACED, catalog) as sim_url:
        out = log.open("wb")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tgdl.downloader",
            env={**os.environ, **env, "TGDL_TELEGRAM": "sim", "TGDL_SIM_URL": sim_url},
            stdout=out, stderr=subprocess.STDOUT)
        try:
            await until(lambda: " ready " in log.read_text(), 60, what="the downloader ready")
            idle = rss(process.pid, "VmRSS:")
            peaks = []
            for message in catalog:
                job = f"mem:{message.message_id}"
                await leases.acquire(message.message_id, job, "mem")
                await js.publish(names.download_jobs,
                                 DownloadJob(job_id=job, entry=message.to_entry())
                                 .model_dump_json().encode(),
                                 stream=names.jobs_stream, headers={"Nats-Msg-Id": job})
                done = await until(lambda j=job: outcomes.get(j), 300, what=f"outcome of {job}")
                assert done.status == "completed", done
                peaks.append(rss(process.pid))
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 20)
            finally:
                if process.returncode is None:
                    process.kill()
                out.close()
            await sub.unsubscribe()
            shutil.rmtree(isolation.media_root, ignore_errors=True)  # a quarter of a GB
    small, large = peaks
    print(f"RSS idle {idle / MB:.1f} MB; peak after {SMALL // MB} MB: {small / MB:.1f} MB, "
          f"after {LARGE // MiB} MiB: {large / MB:.1f} MB")
    assert large <= 1.3 * small, (small / MB, large / MB)
    assert large - idle <= 12 * MB, (idle / MB, large / MB)
