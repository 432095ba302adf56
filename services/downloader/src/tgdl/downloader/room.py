"""Room on this replica's Telegram connections: a replica takes another job only while
its connections have room for another request.

Every replica pulls from the same queue, so a job goes to whichever replica asks first.
Counted in slots alone, one replica could hold four files (more requests than its
connections carry) while another held one (connections idle). Counted in requests, a
replica whose connections are full leaves the next job to one whose are not. A job
counts what its size says it will ask for until its parts are asked for, then the parts
actually asked for and not yet arrived: a part being hashed and stored holds no
connection, and a file near its end asks for fewer, so the next job is taken while the
last parts still arrive. Slots still bound the jobs at once: a file of one part asks for
one request, so small files (latency-bound) run up to the slots in parallel. The data
centers' pools count as one (the next job's is unknown until it is taken): a replica busy
in one data center leaves a file of another to a replica with room, or takes it when its
own requests fall below its connections.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable

from tgdl.downloader.parts import requests_for
from tgdl.downloader.telegram.port import PART_SIZE


def wanted(size: int | None, parts_per_file: int, depth: int, capacity: int) -> int:
    """Requests a file of `size` bytes asks for at once when it starts (`fetch_parts`
    runs that many): one for a file of one part; if its size is unknown, all there are."""
    if size is None:
        return capacity
    parts = max(1, -(-size // PART_SIZE))
    return min(requests_for(size, parts_per_file, depth), parts)


class Room:
    """The part requests this replica's jobs want against what its connections carry
    (`capacity`: connections x requests per connection), each job under its own key."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._wants: dict[Hashable, int] = {}
        self._free = asyncio.Event()
        self._free.set()

    def want(self, job: Hashable, requests: int) -> None:
        self._wants[job] = requests
        self._update()

    def drop(self, job: Hashable) -> None:
        self._wants.pop(job, None)
        self._update()

    def wanted(self) -> int:
        return sum(self._wants.values())

    def has_room(self) -> bool:
        return self.wanted() < self.capacity

    async def wait(self) -> None:
        """Return once some connection has a free request."""
        while not self.has_room():
            await self._free.wait()

    def _update(self) -> None:
        if self.has_room():
            self._free.set()
        else:
            self._free.clear()
