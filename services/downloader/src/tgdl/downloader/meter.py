"""Honest speed and time-remaining from what was actually written (pure)."""

from __future__ import annotations

from collections import deque


class Meter:
    """Bytes per second over a sliding window; ETA from the remaining bytes."""

    def __init__(self, total: int, start: int, now: float, window: float = 3.0) -> None:
        self.total = total
        self.done = start
        self.window = window
        self._samples: deque[tuple[float, int]] = deque([(now, start)])

    def add(self, nbytes: int, now: float) -> None:
        self.done += nbytes
        self._samples.append((now, self.done))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window:
            self._samples.popleft()

    def restart(self, now: float) -> None:
        """After a pause (flood wait, retry): do not count the pause as slowness."""
        self._samples = deque([(now, self.done)])

    @property
    def speed(self) -> int:
        (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
        return int((b1 - b0) / (t1 - t0)) if t1 > t0 else 0

    @property
    def eta(self) -> int | None:
        speed = self.speed
        if self.done >= self.total:
            return 0
        return -(-(self.total - self.done) // speed) if speed > 0 else None
