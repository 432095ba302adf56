from __future__ import annotations

from typing import Literal

from pydantic import Field

from tgdl.contracts.config import CommonSettings


class DownloaderSettings(CommonSettings):
    telegram: Literal["sim", "telethon"] = "sim"
    sim_url: str = "http://127.0.0.1:8100"
    replica: str = "downloader"
    account: str = "default"  # replicas sharing an account share its flood waits
    slots: int = Field(default=4, ge=1, le=64)  # downloads at once in this replica
    progress_interval: float = Field(default=0.25, gt=0)  # seconds between progress messages
    retry_base_delay: float = Field(default=1.0, ge=0)  # back-off: see retry_delay
    retry_max_delay: float = Field(default=30.0, ge=0)
    max_flood_wait: int = Field(default=3600, ge=0)  # longer waits fail the file instead
    parts_per_file: int = Field(default=0, ge=0, le=32)  # 1 MiB parts in flight; 0: by size
    connections_per_dc: int = Field(default=4, ge=1, le=32)  # per account: bounds parts
    # Each connection carries this many part requests at once, which hides the round trip
    # between two parts; a file has parts_per_file x this many requests in flight.
    requests_per_connection: int = Field(default=2, ge=1, le=8)
    # How long a replica whose connections are full leaves the next job to a replica with
    # room before it takes the job anyway (its requests then share the connections): files
    # spread by free connections, and a small file never waits for a large one to end.
    room_patience: float = Field(default=2.0, ge=0)
    # A download starts only if the media folder's disk keeps this much free after it
    # (otherwise storage_error, with the numbers), so a full disk never cuts files short.
    min_free_bytes: int = Field(default=256 * 1024 * 1024, ge=0)

    def retry_delay(self, attempt: int) -> float:
        """How long a job that failed its `attempt`-th delivery (1 for the first) waits
        before the next: the base, doubled with each attempt, at most the maximum."""
        return min(self.retry_base_delay * 2 ** (attempt - 1), self.retry_max_delay)
