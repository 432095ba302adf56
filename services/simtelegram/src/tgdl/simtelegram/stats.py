"""What the simulated Telegram is serving: files with open content streams, the streams
themselves (a file fetched in parallel parts has several), and what they sent.

Tests and benchmarks read these numbers (``GET /stats``) to check concurrency limits,
resumes and cancellation from the outside, as Telegram itself would see them: `serving`
counts files (what the permits bound), `connections` counts streams.
"""

from __future__ import annotations

from collections import Counter
from typing import Any


class ServingStats:
    def __init__(self) -> None:
        self._serving: Counter[int] = Counter()  # message id -> open content responses
        self.max_serving = 0
        self.max_connections = 0
        self.requests: Counter[int] = Counter()  # content requests per message id
        # ... per file id: forwards of one file share it, so a file fetched once for
        # several messages shows 1 here
        self.file_requests: Counter[int] = Counter()
        self.lookups: Counter[int] = Counter()  # message requests per message id
        self.bytes_sent: Counter[int] = Counter()

    @property
    def serving(self) -> int:
        return len(self._serving)

    @property
    def connections(self) -> int:
        return self._serving.total()

    def requested(self, message_id: int, file_id: int | None = None) -> None:
        self.requests[message_id] += 1
        self.file_requests[message_id if file_id is None else file_id] += 1

    def looked_up(self, message_id: int) -> None:
        self.lookups[message_id] += 1

    def opened(self, message_id: int) -> None:
        self._serving[message_id] += 1
        self.max_serving = max(self.max_serving, self.serving)
        self.max_connections = max(self.max_connections, self.connections)

    def closed(self, message_id: int) -> None:
        self._serving[message_id] -= 1
        if self._serving[message_id] <= 0:
            del self._serving[message_id]

    def sent(self, message_id: int, size: int) -> None:
        self.bytes_sent[message_id] += size

    def reset(self) -> None:
        """Forget counters and the maximum; streams still open stay counted."""
        self.max_serving = self.serving
        self.max_connections = self.connections
        self.requests.clear()
        self.file_requests.clear()
        self.lookups.clear()
        self.bytes_sent.clear()

    def snapshot(self) -> dict[str, Any]:
        return {
            "serving": self.serving,
            "max_serving": self.max_serving,
            "serving_ids": sorted(self._serving),
            "connections": self.connections,
            "max_connections": self.max_connections,
            "requests": {str(m): n for m, n in sorted(self.requests.items())},
            "file_requests": {str(f): n for f, n in sorted(self.file_requests.items())},
            "lookups": {str(m): n for m, n in sorted(self.lookups.items())},
            "bytes_sent": self.bytes_sent.total(),
            "bytes_sent_by_id": {str(m): n for m, n in sorted(self.bytes_sent.items())},
        }
