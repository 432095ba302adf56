"""Parallel parts against the real simulated Telegram over HTTP: range requests, range
hashes, a corrupted range, and the account's connection limit."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import httpx
import pytest
from sim_helpers import largest_healthy
from waiting import until

from tgdl.contracts.catalog import CatalogEntry
from tgdl.downloader.files import PartFile
from tgdl.downloader.parts import PartStats, fetch_parts
from tgdl.downloader.telegram.port import PART_SIZE, FloodWait
from tgdl.downloader.telegram.simulated import SimulatedTelegram
from tgdl.simtelegram import client, content


def largest() -> CatalogEntry:
    entry = largest_healthy()
    assert (entry.size or 0) > 2 * PART_SIZE
    return entry


async def download(tg: SimulatedTelegram, entry: CatalogEntry, final: Path,
                   stats: PartStats | None = None) -> PartFile:
    media = await tg.resolve(entry)
    file = PartFile(final, media.size, PART_SIZE)
    file.open()
    try:
        async with tg.parts(media) as source:
            async def stored(nbytes: int) -> None:
                pass
            await fetch_parts(source, file, 4, stored, stats)
        file.commit()
    finally:
        file.close()
    return file


async def test_a_range_request_answers_exactly_that_range(sim):
    entry = largest()
    url = f"{sim}/chats/{entry.chat}/messages/{entry.telegram_message_id}/content"
    async with httpx.AsyncClient() as http:
        response = await http.get(url, params={"offset": PART_SIZE, "limit": 5000})
    assert response.status_code == 200
    assert response.content == content.read(entry.message_id, entry.size, PART_SIZE, 5000)


async def test_a_file_comes_in_verified_parts_each_asked_once(tg, sim, tmp_path):
    entry = largest()

    file = await download(tg, entry, tmp_path / "f.bin")

    digest = hashlib.sha256((tmp_path / "f.bin").read_bytes()).hexdigest()
    assert digest == content.expected_sha256(entry.message_id, entry.size)
    assert file.all_verified()
    assert (await client.stats(sim))["requests"][entry.message_id] == file.count


async def test_a_file_with_its_kept_location_costs_no_request_for_its_message(tg, sim,
                                                                            tmp_path):
    entry = largest()
    assert entry.location is not None and entry.location.size == entry.size

    file = await download(tg, entry, tmp_path / "f.bin")

    assert (tmp_path / "f.bin").read_bytes() == content.read(
        entry.message_id, entry.size, 0, entry.size)
    stats = await client.stats(sim)
    assert stats["lookups"] == {}
    assert stats["requests"][entry.message_id] == file.count


async def test_an_expired_reference_asks_for_the_message_once_and_goes_on(tg, sim, tmp_path):
    entry = largest()
    await client.set_faults(sim, expire_reference={"message_id": entry.message_id})

    file = await download(tg, entry, tmp_path / "f.bin")

    assert (tmp_path / "f.bin").read_bytes() == content.read(
        entry.message_id, entry.size, 0, entry.size)
    stats = await client.stats(sim)
    assert stats["lookups"] == {entry.message_id: 1}
    assert stats["requests"][entry.message_id] == file.count + 1  # the refused one again


async def test_without_a_kept_location_the_message_is_asked_for_first(tg, sim, tmp_path):
    entry = largest().model_copy(update={"location": None})

    await download(tg, entry, tmp_path / "f.bin")

    assert (await client.stats(sim))["lookups"] == {entry.message_id: 1}


async def test_a_corrupted_range_is_fetched_again(tg, sim, tmp_path):
    entry = largest()
    await client.set_faults(sim, corrupt={"message_id": entry.message_id,
                                          "offset": PART_SIZE})
    stats = PartStats()

    file = await download(tg, entry, tmp_path / "f.bin", stats)

    assert (tmp_path / "f.bin").read_bytes() == content.read(
        entry.message_id, entry.size, 0, entry.size)
    assert stats.refetched == 1 and file.all_verified()
    assert (await client.stats(sim))["requests"][entry.message_id] == file.count + 1


async def test_connections_beyond_the_accounts_limit_get_a_flood_wait(tg, sim):
    entry = largest()
    await client.set_faults(sim, max_connections=1, bandwidth=100_000)  # parts stay open
    media = await tg.resolve(entry)
    async with tg.parts(media) as source:
        # Two requests share the first connection; the third needs another one.
        first = [asyncio.create_task(source.read(i * PART_SIZE, PART_SIZE)) for i in (0, 1)]
        await until(lambda: _streams(sim, 2), 5, what="both streams of the first connection")
        with pytest.raises(FloodWait):
            await source.read(2 * PART_SIZE, PART_SIZE)
        for task in first:
            task.cancel()
        await asyncio.gather(*first, return_exceptions=True)


async def _serving(sim: str, count: int) -> bool:
    return (await client.stats(sim))["serving"] == count


async def _streams(sim: str, count: int) -> bool:
    return (await client.stats(sim))["connections"] == count  # streams, as stats counts


async def test_a_slow_range_trickles_while_the_others_come_at_speed(tg, sim):
    entry = largest()
    await client.set_faults(sim, slow={"message_id": entry.message_id, "offset": PART_SIZE,
                                       "bandwidth": 5_000})
    media = await tg.resolve(entry)
    async with tg.parts(media) as source:
        held = asyncio.create_task(source.read(PART_SIZE, PART_SIZE))
        await until(lambda: _serving(sim, 1), 5, what="the slow range answering")
        first = await source.read(0, PART_SIZE)  # unpaced: at once
        assert first == content.read(entry.message_id, entry.size, 0, PART_SIZE)
        assert not held.done() and (await client.stats(sim))["serving"] == 1
        held.cancel()
        await asyncio.gather(held, return_exceptions=True)
        # the fault was the next request's at that offset: the one after comes at speed
        again = await source.read(PART_SIZE, PART_SIZE)
    assert again == content.read(entry.message_id, entry.size, PART_SIZE, PART_SIZE)
