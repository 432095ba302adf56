"""The rule by which a downloader replica takes another job: only while its connections
have room for another request (`Room`), each job counted by what it asks for."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from waiting import until

from tgdl.downloader.files import PartFile
from tgdl.downloader.parts import fetch_parts
from tgdl.downloader.room import Room, wanted
from tgdl.downloader.telegram.port import PART_SIZE

MiB = PART_SIZE
CAPACITY = 8  # 4 connections x 2 requests, the defaults


def test_a_job_wants_what_its_parts_ask_for_at_once():
    assert wanted(10_000, 0, 2, CAPACITY) == 1  # one part: one request
    assert wanted(MiB, 0, 2, CAPACITY) == 1
    assert wanted(3 * MiB - 1, 0, 2, CAPACITY) == 3  # 2 parts x 2 requests, but 3 parts
    assert wanted(9 * MiB, 0, 2, CAPACITY) == 8  # 4 parts x 2 requests
    assert wanted(100 * MiB, 0, 2, CAPACITY) == 16  # more than the connections carry
    assert wanted(100 * MiB, 1, 2, CAPACITY) == 2  # TGDL_PARTS_PER_FILE
    assert wanted(None, 0, 2, CAPACITY) == CAPACITY  # unknown size: assume it fills them


def test_small_files_leave_room_up_to_the_slots():
    room = Room(CAPACITY)
    for job in range(4):  # a replica's four slots of files of one part
        room.want(job, wanted(100_000, 0, 2, CAPACITY))
    assert room.has_room()


def test_a_file_that_fills_the_connections_leaves_no_room_until_it_asks_for_less():
    room = Room(CAPACITY)
    room.want("big", wanted(9 * MiB, 0, 2, CAPACITY))
    assert not room.has_room()
    room.want("big", 7)  # one of its parts arrived and is being stored; none left to ask
    assert room.has_room()
    room.want("small", 1)
    assert not room.has_room()
    room.drop("small")
    assert room.has_room()


async def test_waiting_for_room_ends_when_a_job_asks_for_less_or_ends():
    room = Room(CAPACITY)
    room.want("a", 6)
    room.want("b", 4)
    waiter = asyncio.create_task(room.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    room.want("a", 5)  # still 9 of 8
    await asyncio.sleep(0)
    assert not waiter.done()
    room.drop("b")
    async with asyncio.timeout(1):
        await waiter
    room.want("c", 3)
    with pytest.raises(TimeoutError):  # full again: a new wait blocks
        async with asyncio.timeout(0.05):
            await room.wait()


class GatedSource:
    """A `PartSource` whose parts arrive when the test lets them."""

    def __init__(self) -> None:
        self.gates: dict[int, asyncio.Event] = {}

    async def read(self, offset: int, length: int) -> bytes:
        await self.gates.setdefault(offset, asyncio.Event()).wait()
        return b"x" * length

    async def pieces(self, offset: int, length: int) -> AsyncIterator[bytes]:
        yield await self.read(offset, length)

    async def hashes(self, offset: int, length: int) -> None:
        return None


async def test_a_download_reports_the_parts_it_asks_for_not_those_being_stored(tmp_path):
    file = PartFile(tmp_path / "f.bin", 3 * MiB, MiB)
    file.open()
    source, asked = GatedSource(), []

    async def stored(nbytes: int) -> None:
        pass
    try:
        fetching = asyncio.create_task(fetch_parts(source, file, 2, stored, None, asked.append))
        await until(lambda: asked and asked[-1] == 2, what="two parts asked for")
        source.gates[0].set()  # the first arrives: the third is asked for in its place
        await until(lambda: 0 in file.done and asked[-1] == 2, what="the third asked for")
        assert 1 in asked[2:]  # between the two: the arrived part counted no more
        source.gates[MiB].set()
        source.gates.setdefault(2 * MiB, asyncio.Event()).set()
        await fetching
        assert asked[-1] == 0 and max(asked) == 2
    finally:
        file.close()
