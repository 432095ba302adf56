"""Progress is written to PostgreSQL at most about once per interval: the newest report
per job waits in memory and all of them go out together in one transaction."""

from __future__ import annotations

import time
from collections.abc import Callable

from tgdl.contracts.jobs import DownloadProgress
from tgdl.projector.fold import newer_progress


class ProgressBuffer:
    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._newest: dict[str, DownloadProgress] = {}
        self._seq = 0  # highest stream sequence offered since the last take
        self._last_flush = float("-inf")

    def offer(self, seq: int, progress: DownloadProgress | None) -> None:
        """Remember a report (None: an unreadable message, whose position still counts)."""
        self._seq = max(self._seq, seq)
        if progress is not None:
            held = self._newest.get(progress.job_id)
            self._newest[progress.job_id] = (
                progress if held is None else newer_progress(held, progress)
            )

    @property
    def dirty(self) -> bool:
        return self._seq > 0

    def due_in(self) -> float | None:
        """Seconds until the next flush is due; None when nothing waits. The first report
        after a quiet spell is due at once, so light load sees no delay."""
        if not self.dirty:
            return None
        return max(0.0, self._last_flush + self.interval - self._clock())

    def take(self) -> tuple[list[DownloadProgress], int]:
        """Everything held (newest per job) and the highest sequence it covers."""
        taken, seq = list(self._newest.values()), self._seq
        self._newest, self._seq = {}, 0
        self._last_flush = self._clock()
        return taken, seq
