"""Which waiting job is admitted next under the global cap: priority first, aging so low
is never starved (the rule of tgdl.bus.admission)."""

from __future__ import annotations

from tgdl.bus.admission import Waiting, choose
from tgdl.contracts.status import Priority

AGING = 60.0
NOW = 10_000.0


def waiting(priority: str, waited: float, seq: int = 1) -> Waiting:
    return Waiting(seq=seq, priority=Priority(priority), since=NOW - waited)


def pick(*heads: Waiting) -> Waiting | None:
    return choose(heads, NOW, AGING)


def test_higher_priority_goes_first_whatever_came_first():
    high, normal, low = waiting("high", 1), waiting("normal", 30), waiting("low", 59)
    assert pick(low, normal, high) is high
    assert pick(low, normal) is normal


def test_nothing_waiting_admits_nothing():
    assert pick() is None


def test_a_job_climbs_one_class_per_aging_period():
    assert pick(waiting("high", 0), waiting("normal", 60)) is not None
    # a normal job that waited one period ranks as high, and is the older
    assert pick(waiting("high", 0), waiting("normal", 60)).priority == Priority.normal
    assert pick(waiting("high", 0), waiting("low", 60)).priority == Priority.high
    # low needs two periods to rank as high: it waits at most that long behind new highs
    assert pick(waiting("high", 0), waiting("low", 120)).priority == Priority.low


def test_among_equal_ranks_the_longest_waiting_goes_first():
    assert pick(waiting("normal", 70), waiting("high", 10)).priority == Priority.normal
    assert pick(waiting("high", 5), waiting("normal", 60)).priority == Priority.normal
