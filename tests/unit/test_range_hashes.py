"""Telegram's range hashes of one file (`SharedFile.covering_hashes`): asked for a few
ranges at a time, each handed to the part it covers, and not kept after that, so what a
download holds does not grow with the file."""

from __future__ import annotations

import hashlib

from tgdl.downloader.telegram.port import PART_SIZE, SharedFile

RANGE = 128 * 1024  # Telegram hashes 128 KiB ranges
PER_ANSWER = 10  # ranges in one answer (a few at a time, as upload.getFileHashes gives)


def digest(start: int) -> bytes:
    return hashlib.sha256(str(start).encode()).digest()


class Telegram:
    def __init__(self, size: int) -> None:
        self.size = size
        self.asked: list[int] = []

    async def ranges_from(self, position: int):
        self.asked.append(position)
        return [(start, min(RANGE, self.size - start), digest(start))
                for start in range(position, min(position + PER_ANSWER * RANGE, self.size),
                                   RANGE)]


async def test_each_part_gets_its_ranges_and_the_file_keeps_none_of_them():
    size = 64 * PART_SIZE
    telegram, file = Telegram(size), SharedFile(max_refreshes=1)
    held = []
    for offset in range(0, size, PART_SIZE):
        ranges = await file.covering_hashes(offset, PART_SIZE, telegram.ranges_from)
        assert [r[0] for r in ranges] == list(range(offset, offset + PART_SIZE, RANGE))
        assert all(d == digest(start) for start, _, d in ranges)
        held.append(len(file._hashes))
    # what an answer gave beyond its part waits for the next part; nothing else is kept
    # (512 ranges for these 64 MiB, 16 384 for 2 GiB)
    assert max(held) < PER_ANSWER
    assert len(telegram.asked) < 64  # and that surplus spares requests


async def test_a_part_fetched_again_asks_for_its_ranges_again():
    telegram, file = Telegram(4 * PART_SIZE), SharedFile(max_refreshes=1)
    first = await file.covering_hashes(PART_SIZE, PART_SIZE, telegram.ranges_from)
    again = await file.covering_hashes(PART_SIZE, PART_SIZE, telegram.ranges_from)
    assert again == first and telegram.asked == [PART_SIZE, PART_SIZE]
