"""Files fetched as parallel 1 MiB parts through Telethon's real client (answered by the
scripted Telegram of fakes/telegram_server.py): several connections, Telegram's request
rules, shared trouble handled once, and resumes after a kill that fetch only what is
missing."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fakes import part_download
from fakes.telegram_server import MiB, TelegramServer, content, sha256
from telethon.tl import functions
from waiting import until

from tgdl.contracts.catalog import CatalogEntry
from tgdl.downloader.files import PartFile, parts_path, recorded_parts
from tgdl.downloader.parts import PartStats, fetch_parts, parts_for
from tgdl.downloader.telegram.port import PART_SIZE, FloodWait, PermanentError
from tgdl.downloader.telegram.telethon import TelethonTelegram
from tgdl.telegram.client import client_options

GetFile = functions.upload.GetFileRequest


@pytest.fixture
def server() -> TelegramServer:
    return TelegramServer()


async def started(server: TelegramServer, connections: int = 4) -> TelethonTelegram:
    client = server.client(server.logged_in_session(), **client_options())
    port = TelethonTelegram(client, request_timeout=5.0, connections_per_dc=connections)
    await port.start()
    return port


@pytest.fixture
async def port(server) -> AsyncIterator[TelethonTelegram]:
    p = await started(server)
    yield p
    await p.close()


def post(server: TelegramServer, size: int, name: str, **where) -> tuple[CatalogEntry, bytes]:
    news = server.channels.get(1) or server.add_channel("news")
    data = content(size, name)
    telegram_id = server.post_document(news, data, file_name=f"{name}.bin", **where)
    return CatalogEntry(message_id=telegram_id, chat="news", telegram_message_id=telegram_id,
                        size=size), data


async def download(port: TelethonTelegram, entry: CatalogEntry, final: Path,
                   width: int = 8, stats: PartStats | None = None) -> PartFile:
    """What the worker does with a file (without the job around it)."""
    media = await port.resolve(entry)
    file = PartFile(final, media.size, PART_SIZE)
    file.open()
    try:
        async with port.parts(media) as source:
            async def stored(nbytes: int) -> None:
                pass
            await fetch_parts(source, file, width, stored, stats)
        file.commit()
    finally:
        file.close()
    return file


def assert_telegram_rules(server: TelegramServer) -> None:
    for logged in server.file_requests():
        offset, limit = logged.request.offset, logged.request.limit
        assert offset % 4096 == 0 and limit % 4096 == 0, (offset, limit)
        assert MiB % limit == 0, limit
        assert offset // MiB == (offset + limit - 1) // MiB, (offset, limit)


def served_offsets(server: TelegramServer) -> list[int]:
    return sorted(r.request.offset for r in server.file_requests())


def message_fetches(server: TelegramServer) -> int:
    return len(server.requests(functions.channels.GetMessagesRequest))


def test_parts_in_flight_grow_with_the_size_like_tdl():
    assert [parts_for(n) for n in (10_000, MiB, 4 * MiB, 19 * MiB, 20 * MiB, 2**32)] == [
        1, 2, 2, 4, 8, 8]
    assert parts_for(2**32, setting=3) == 3


async def test_parts_go_over_several_connections_within_telegrams_rules(server, port,
                                                                        tmp_path):
    entry, data = post(server, 10 * MiB + 12_345, "big")

    await download(port, entry, tmp_path / "big.bin", width=8)

    assert sha256((tmp_path / "big.bin").read_bytes()) == sha256(data)
    assert served_offsets(server) == list(range(0, 11 * MiB, MiB))  # each part once
    assert_telegram_rules(server)
    # 8 parts wanted; the pool decides: 4 connections carrying 2 requests each at most
    assert server.most_in_flight <= 8 and server.most_on_a_sender <= 2
    senders = {r.sender for r in server.file_requests()}
    assert len(senders) == 4 and port.pool.connections() == 4
    assert not parts_path(tmp_path / "big.bin").exists()


async def test_a_file_in_another_data_center_moves_there_for_every_part(server, port,
                                                                       tmp_path):
    entry, data = post(server, 6 * MiB, "far", stored_dc=4, announced_dc=2)

    await download(port, entry, tmp_path / "far.bin", width=4)

    assert sha256((tmp_path / "far.bin").read_bytes()) == sha256(data)
    migrated = [r for r in server.file_requests() if r.dc_id == 2]
    assert 1 <= len(migrated) <= 4  # only the parts already on their way asked at home
    assert sorted(r.request.offset for r in server.file_requests() if r.dc_id == 4) == list(
        range(0, 6 * MiB, MiB))


async def test_an_expired_reference_is_refreshed_once_for_four_parts_in_flight(
    server, port, tmp_path
):
    entry, data = post(server, 8 * MiB, "doc")
    server.gather_file_requests(4)  # the first four parts are all in flight...
    media = await port.resolve(entry)
    server.files[media.handle.id].rotate_reference()  # ...when they find it expired
    before = message_fetches(server)

    async with port.parts(media) as source:
        parts = await asyncio.gather(*(source.read(i * MiB, MiB) for i in range(4)))

    assert b"".join(parts) == data[:4 * MiB]
    assert server.most_in_flight == 4
    assert sorted(r.request.offset for r in server.file_requests()) == [
        0, 0, MiB, MiB, 2 * MiB, 2 * MiB, 3 * MiB, 3 * MiB]  # each refused once, then served
    assert message_fetches(server) - before == 1  # one refresh for all four


# --- Telegram's hashes --------------------------------------------------------------------


async def test_every_part_is_checked_against_telegrams_hashes(server, port, tmp_path):
    entry, data = post(server, 3 * MiB + 5000, "checked")

    file = await download(port, entry, tmp_path / "checked.bin", width=4)

    assert sha256((tmp_path / "checked.bin").read_bytes()) == sha256(data)
    assert file.all_verified()
    assert len(server.requests(functions.upload.GetFileHashesRequest)) == 4  # one per part


async def test_a_corrupted_range_is_fetched_again_and_the_file_is_right(server, port,
                                                                       tmp_path):
    entry, data = post(server, 4 * MiB, "bent")
    server.corrupt_file_at(2 * MiB)
    stats = PartStats()

    file = await download(port, entry, tmp_path / "bent.bin", width=4, stats=stats)

    assert sha256((tmp_path / "bent.bin").read_bytes()) == sha256(data)
    assert stats.refetched == 1 and file.all_verified()
    assert served_offsets(server) == [0, MiB, 2 * MiB, 2 * MiB, 3 * MiB]


async def test_a_range_that_stays_corrupted_fails_the_file_with_a_reason(server, port,
                                                                        tmp_path):
    entry, _ = post(server, 2 * MiB, "broken")
    server.corrupt_file_at(MiB, times=10)

    # One part at a time: the first is stored before the second is tried (side by side,
    # the second's failure could stop the first before it was stored).
    with pytest.raises(PermanentError) as failed:
        await download(port, entry, tmp_path / "broken.bin", width=1)

    assert "SHA-256" in failed.value.failure.detail
    assert not (tmp_path / "broken.bin").exists()
    assert PartFile(tmp_path / "broken.bin", 2 * MiB, PART_SIZE).open() == {0}  # kept


async def test_a_file_without_hashes_completes_unverified(server, port, tmp_path):
    news = server.add_channel("pics")
    data = content(300_000, "photo")
    telegram_id = server.post_photo(news, data)
    entry = CatalogEntry(message_id=9, chat="pics", telegram_message_id=telegram_id)

    file = await download(port, entry, tmp_path / "photo.jpg")

    assert (tmp_path / "photo.jpg").read_bytes() == data
    assert not file.all_verified()


# --- flood waits ----------------------------------------------------------------------------


async def test_a_flood_wait_on_one_part_stops_them_all_and_the_rest_comes_after(
    server, port, tmp_path
):
    entry, data = post(server, 8 * MiB, "busy")
    server.fail_file_at(2 * MiB, "FLOOD_WAIT_30", code=420)
    final = tmp_path / "busy.bin"

    with pytest.raises(FloodWait) as waited:
        await download(port, entry, final, width=4)

    assert waited.value.seconds == 30
    stored = recorded_parts(final)
    assert 2 not in stored and len(stored) < 8  # the other parts stopped too
    asked = len(server.file_requests())
    server.advance(30)  # Telegram's wait is over (the worker sits it out for the account)

    await download(port, entry, final, width=4)

    assert sha256(final.read_bytes()) == sha256(data)
    again = sorted(r.request.offset for r in server.file_requests()[asked:])
    assert again == [i * MiB for i in range(8) if i not in stored]  # only what was missing


async def test_kill_9_mid_file_then_another_process_fetches_only_the_missing_parts(tmp_path):
    """A real SIGKILL: no finally, no flush, nothing but what was fsynced survives."""
    final, size = tmp_path / "movie.bin", 6 * MiB + 777
    tests = Path(__file__).resolve().parents[1]
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fakes.part_download", str(final), str(size), "killed",
        cwd=tests, env={**os.environ, "PYTHONPATH": str(tests)})
    try:
        # Parts 1, 3, 4, 5 and 6 finish while 0 and 2 hang: done out of order.
        await until(lambda: recorded_parts(final) == {1, 3, 4, 5, 6}, 30,
                    what="the child stored the parts around the hanging ones")
    finally:
        child.kill()  # SIGKILL
        await child.wait()
    assert child.returncode == -signal.SIGKILL
    with final.with_name(final.name + ".part").open("r+b") as torn:
        torn.write(b"\xff" * 4096)  # as if a write to part 0 was under way: never recorded

    server, entry = part_download.serve(size, "killed", hang=False)
    await part_download.download(server, entry, final)

    assert sha256(final.read_bytes()) == sha256(content(size, "killed"))
    assert sorted(r.request.offset for r in server.file_requests()) == [0, 2 * MiB]
