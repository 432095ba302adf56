"""A part goes to disk piece by piece as it arrives (`fetch_parts`), each piece checked
against Telegram's hash of its range before it is written: a part in flight holds about
one piece, not its whole 1 MiB (16 of them were most of a downloader's memory), and the
.part file never holds bytes that failed their hash, nor records a part not whole."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from tgdl.downloader.files import PartFile, parts_path, recorded_parts
from tgdl.downloader.parts import (
    MAX_MISMATCHES,
    PIECE_BYTES,
    PartStats,
    fetch_checked,
    fetch_parts,
)
from tgdl.downloader.telegram.port import PART_SIZE, PermanentError, SharedFile

RANGE = 128 * 1024  # Telegram hashes 128 KiB ranges
CHUNK = 64 * 1024  # what one read of the connection hands over
SIZE = 3 * PART_SIZE + 5000


def content(size: int) -> bytes:
    return bytes((i * 7 + i // 4096) % 251 for i in range(size))


class Telegram(SharedFile):
    """Parts streamed in 64 KiB chunks; watches what the fetched parts leave unwritten."""

    def __init__(self, data: bytes, file: Written, *, hashes: bool = True,
                 corrupt_at: int | None = None, hashes_delay: float = 0.0) -> None:
        super().__init__(max_refreshes=1)
        self.data, self.file = data, file
        self.with_hashes, self.corrupt_at, self.hashes_delay = hashes, corrupt_at, hashes_delay
        self.most_unwritten = 0  # bytes of one part sent but not yet written, at most

    async def pieces(self, offset: int, length: int):
        for start in range(offset, offset + length, CHUNK):
            self.most_unwritten = max(self.most_unwritten,
                                      start - offset - self.file.written_in(offset))
            chunk = self.data[start:min(start + CHUNK, offset + length)]
            if self.corrupt_at is not None and start <= self.corrupt_at < start + len(chunk):
                at = self.corrupt_at - start
                chunk = chunk[:at] + bytes([chunk[at] ^ 0xFF]) + chunk[at + 1:]
            await asyncio.sleep(0)  # the network: other parts go on meanwhile
            yield chunk

    async def hashes(self, offset: int, length: int):
        await asyncio.sleep(self.hashes_delay)
        if not self.with_hashes:
            return None
        return [(start, min(RANGE, len(self.data) - start),
                 hashlib.sha256(self.data[start:start + RANGE]).digest())
                for start in range(offset, offset + length, RANGE)]


class Written(PartFile):
    """A PartFile that remembers every piece put into it."""

    def __init__(self, final: Path, size: int) -> None:
        super().__init__(final, size, PART_SIZE)
        self.puts: list[tuple[int, bytes]] = []

    def put(self, offset, buffers) -> None:
        self.puts.append((offset, b"".join(bytes(b) for b in buffers)))
        super().put(offset, buffers)

    def written_in(self, part_offset: int) -> int:
        return sum(len(data) for offset, data in self.puts
                   if part_offset <= offset < part_offset + PART_SIZE)


async def nothing(nbytes: int) -> None:
    pass


async def fetch(tmp_path: Path, data: bytes, **telegram) -> tuple[Written, Telegram,
                                                                    PartStats]:
    """The parts of `data`, 4 at a time, into f.bin (committed only if all went well)."""
    file = Written(tmp_path / "f.bin", len(data))
    source, stats = Telegram(data, file, **telegram), PartStats()
    file.open()
    try:
        await fetch_parts(source, file, 4, nothing, stats)
        file.commit()
    finally:
        file.close()
    return file, source, stats


@pytest.mark.parametrize("hashes_delay", [0.0, 0.01])
async def test_a_part_is_written_as_it_arrives_never_held_whole(tmp_path, hashes_delay):
    data = content(SIZE)
    file, source, _ = await fetch(tmp_path, data, hashes_delay=hashes_delay)

    assert (tmp_path / "f.bin").read_bytes() == data
    assert file.all_verified()
    if not hashes_delay:  # hashes there first: at most a range and a chunk wait
        assert source.most_unwritten <= PIECE_BYTES + CHUNK
        assert len(file.puts) >= SIZE // PIECE_BYTES


async def test_a_file_without_hashes_is_written_in_pieces_too_and_stays_unverified(tmp_path):
    data = content(SIZE)
    file, source, _ = await fetch(tmp_path, data, hashes=False)

    assert (tmp_path / "f.bin").read_bytes() == data
    assert not file.all_verified()
    assert source.most_unwritten <= PIECE_BYTES + CHUNK


async def test_a_piece_that_fails_its_hash_is_never_written_nor_its_part_recorded(tmp_path):
    data = content(SIZE)
    bad = PART_SIZE + 3 * RANGE + 10  # in the fourth range of part 1, every time
    file = Written(tmp_path / "f.bin", len(data))
    source, stats = Telegram(data, file, corrupt_at=bad), PartStats()
    file.open()
    try:
        with pytest.raises(PermanentError):
            await fetch_parts(source, file, 4, nothing, stats)
    finally:
        file.close()

    assert stats.refetched >= 2
    for offset, piece in file.puts:  # every piece written is Telegram's own bytes
        assert piece == data[offset:offset + len(piece)]
    assert (PART_SIZE + 2 * RANGE, data[PART_SIZE + 2 * RANGE:PART_SIZE + 3 * RANGE]
            ) in file.puts  # the ranges before the bad one were written, as they came
    assert 1 not in recorded_parts(tmp_path / "f.bin")  # a resume fetches it again
    assert parts_path(tmp_path / "f.bin").exists()


class OnePart:
    """A file of one part whose first `bad` answers are corrupted."""

    def __init__(self, data: bytes, bad: int) -> None:
        self.data, self.bad, self.reads = data, bad, 0

    async def read(self, offset: int, length: int) -> bytes:
        self.reads += 1
        data = self.data[offset:offset + length]
        return bytes([data[0] ^ 0xFF]) + data[1:] if self.reads <= self.bad else data

    async def hashes(self, offset: int, length: int):
        return [(offset, length, hashlib.sha256(self.data[offset:offset + length]).digest())]


@pytest.mark.parametrize("bad", [0, 1, MAX_MISMATCHES - 1])
async def test_a_one_part_file_is_asked_again_until_it_matches_its_hash(bad):
    source, stats = OnePart(content(5000), bad), PartStats()
    data, verified = await fetch_checked(source, 0, 5000, stats)
    assert bytes(data) == content(5000) and verified
    assert (source.reads, stats.refetched) == (bad + 1, bad)


async def test_a_one_part_file_that_keeps_failing_its_hash_fails_after_three_fetches():
    source, stats = OnePart(content(5000), bad=100), PartStats()
    with pytest.raises(PermanentError, match="failed Telegram's SHA-256 check 3 times"):
        await fetch_checked(source, 0, 5000, stats)
    assert source.reads == MAX_MISMATCHES == 3
