"""Faults a test or demo injects into the simulated Telegram (``POST /faults``).

Each fault targets a catalog ``message_id`` and is consumed by the next content
requests for that message: ``times`` requests answer a flood wait, or see their stream
cut after ``after_bytes`` bytes, or are told their file reference expired, or (``corrupt``)
carry a flipped byte in the range starting at ``offset``, or (``slow``) trickle the range
starting at ``offset`` at ``bandwidth`` bytes/s. The speeds and limits of the
whole account can be changed too: per-connection and account bandwidth, latency, and how
many connections it may use before it is answered with a flood wait.
"""

from __future__ import annotations

from collections import defaultdict, deque
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Fault(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    message_id: int = Field(ge=1)
    times: int = Field(default=1, ge=1, le=10_000)


class FloodWaitFault(_Fault):
    seconds: int = Field(ge=1, le=86_400)


class DropFault(_Fault):
    after_bytes: int = Field(ge=0)


class ExpireReferenceFault(_Fault):
    """Content requests answer 400 ``file_reference_expired`` until the client refetches."""


class CorruptFault(_Fault):
    """Content answers starting at `offset` carry one flipped byte (the hashes stay
    right, so a client checking them sees the damage)."""

    offset: int = Field(default=0, ge=0)


class SlowFault(_Fault):
    """Content answers starting at `offset` come at `bandwidth` bytes/s (the slower of
    this and the connection's pace): a download is held part-way, its other parts
    stored, for as long as a test needs it running."""

    offset: int = Field(default=0, ge=0)
    bandwidth: int = Field(ge=1)


class FaultRequest(BaseModel):
    """Body of ``POST /faults``: any combination of faults; each kind takes one object or
    a list of them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    flood_wait: list[FloodWaitFault] = Field(default_factory=list)
    drop: list[DropFault] = Field(default_factory=list)
    expire_reference: list[ExpireReferenceFault] = Field(default_factory=list)
    corrupt: list[CorruptFault] = Field(default_factory=list)
    slow: list[SlowFault] = Field(default_factory=list)
    delete: list[int] = Field(default_factory=list)  # message ids deleted from now on
    bandwidth: int | None = Field(default=None, ge=0)  # bytes/s per connection, 0 = unlimited
    latency: float | None = Field(default=None, ge=0, le=60)
    account_bandwidth: int | None = Field(default=None, ge=0)  # bytes/s in all; 0 = no cap
    max_connections: int | None = Field(default=None, ge=0)  # beyond: flood wait; 0 = none

    @field_validator("flood_wait", "drop", "expire_reference", "corrupt", "slow",
                     mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _not_empty(self) -> Self:
        if not self.model_fields_set:
            raise ValueError("name at least one fault")
        return self

    def message_ids(self) -> set[int]:
        """Every message id the request refers to (each must exist in the catalog)."""
        faults: list[_Fault] = [*self.flood_wait, *self.drop, *self.expire_reference,
                                *self.corrupt, *self.slow]
        return set(self.delete) | {fault.message_id for fault in faults}


class Faults:
    """Pending faults; every `take_*` consumes one occurrence."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self._flood: defaultdict[int, deque[int]] = defaultdict(deque)  # seconds per request
        self._drop: defaultdict[int, deque[int]] = defaultdict(deque)  # after_bytes per request
        self._expired: defaultdict[int, int] = defaultdict(int)
        self._corrupt: defaultdict[tuple[int, int], int] = defaultdict(int)  # (id, offset)
        self._slow: defaultdict[tuple[int, int], deque[int]] = defaultdict(deque)  # bytes/s
        self.deleted: set[int] = set()
        self.bandwidth: int | None = None
        self.latency: float | None = None
        self.account_bandwidth: int | None = None
        self.max_connections: int | None = None

    def add(self, request: FaultRequest) -> None:
        for flood in request.flood_wait:
            self._flood[flood.message_id].extend([flood.seconds] * flood.times)
        for drop in request.drop:
            self._drop[drop.message_id].extend([drop.after_bytes] * drop.times)
        for expiry in request.expire_reference:
            self._expired[expiry.message_id] += expiry.times
        for corrupt in request.corrupt:
            self._corrupt[(corrupt.message_id, corrupt.offset)] += corrupt.times
        for slow in request.slow:
            self._slow[(slow.message_id, slow.offset)].extend([slow.bandwidth] * slow.times)
        self.deleted.update(request.delete)
        if request.account_bandwidth is not None:
            self.account_bandwidth = request.account_bandwidth
        if request.max_connections is not None:
            self.max_connections = request.max_connections
        if request.bandwidth is not None:
            self.bandwidth = request.bandwidth
        if request.latency is not None:
            self.latency = request.latency

    def take_flood_wait(self, message_id: int) -> int | None:
        pending = self._flood.get(message_id)
        return pending.popleft() if pending else None

    def take_drop(self, message_id: int) -> int | None:
        pending = self._drop.get(message_id)
        return pending.popleft() if pending else None

    def take_expired_reference(self, message_id: int) -> bool:
        if self._expired.get(message_id, 0) <= 0:
            return False
        self._expired[message_id] -= 1
        return True

    def take_corrupt(self, message_id: int, offset: int) -> bool:
        if self._corrupt.get((message_id, offset), 0) <= 0:
            return False
        self._corrupt[(message_id, offset)] -= 1
        return True

    def take_slow(self, message_id: int, offset: int) -> int | None:
        pending = self._slow.get((message_id, offset))
        return pending.popleft() if pending else None

    def describe(self) -> dict[str, Any]:
        return {
            "flood_wait": {str(m): list(q) for m, q in sorted(self._flood.items()) if q},
            "drop": {str(m): list(q) for m, q in sorted(self._drop.items()) if q},
            "expire_reference": {str(m): n for m, n in sorted(self._expired.items()) if n},
            "corrupt": {f"{m}@{o}": n for (m, o), n in sorted(self._corrupt.items()) if n},
            "slow": {f"{m}@{o}": list(q) for (m, o), q in sorted(self._slow.items()) if q},
            "deleted": sorted(self.deleted),
            "bandwidth": self.bandwidth,
            "latency": self.latency,
            "account_bandwidth": self.account_bandwidth,
            "max_connections": self.max_connections,
        }
