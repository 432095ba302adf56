"""The downloader's SimulatedTelegram adapter against the real simulated Telegram server,
over HTTP on loopback."""

from __future__ import annotations

import hashlib

import httpx
import pytest
from sim_helpers import FAST, FAST_MESSAGES, largest_healthy

from tgdl.contracts.catalog import CatalogEntry
from tgdl.contracts.errors import ErrorCode
from tgdl.downloader.telegram.port import (
    FloodWait,
    PermanentError,
    RemoteMedia,
    TransientError,
)
from tgdl.downloader.telegram.simulated import SimulatedTelegram
from tgdl.launcher.embedded import free_port
from tgdl.simtelegram import client, content
from tgdl.simtelegram.catalog import demo_catalog

CATALOG = [m.to_entry() for m in FAST_MESSAGES]
REQUEST = SimulatedTelegram.request_size


def _largest(rank: int = 0) -> CatalogEntry:
    entry = largest_healthy(rank)
    assert (entry.size or 0) > 3 * REQUEST  # several chunks, so streams stay open a while
    return entry


async def _download(tg: SimulatedTelegram, media: RemoteMedia, offset: int = 0) -> bytes:
    chunks = [chunk async for chunk in tg.stream(media, offset)]
    assert all(len(c) == REQUEST for c in chunks[:-1]) and 0 < len(chunks[-1]) <= REQUEST
    return b"".join(chunks)


async def test_catalog_over_http_is_the_demo_catalog(sim: str) -> None:
    served = await client.fetch_catalog(sim)
    assert served[:FAST.count] == CATALOG
    # then the forwards: earlier messages' files (same file id, kind, size) in new messages
    forwards = served[FAST.count:]
    assert [e.message_id for e in forwards] == list(
        range(FAST.count + 1, FAST.count + FAST.forwards + 1))
    by_id = {e.message_id: e for e in CATALOG}
    for e in forwards:
        source = by_id[e.location.id]
        assert (e.media_kind, e.size, e.file_name) == (source.media_kind, source.size,
                                                       source.file_name)


async def test_a_forward_serves_its_files_bytes(tg: SimulatedTelegram, sim: str) -> None:
    forward = next(m for m in demo_catalog(FAST.count, FAST.min_size, FAST.max_size,
                                           FAST.seed, forwards=FAST.forwards)
                   if m.file_id != m.message_id)
    await client.reset_stats(sim)
    data = await _download(tg, await tg.resolve(forward.to_entry()))
    assert hashlib.sha256(data).hexdigest() == content.expected_sha256(forward.file_id,
                                                                       forward.size)
    stats = await client.stats(sim)
    assert stats["requests"][forward.message_id] >= 1
    assert set(stats["file_requests"]) == {forward.file_id}


async def test_resolve_describes_the_media(tg: SimulatedTelegram) -> None:
    entry = _largest()
    media = await tg.resolve(entry)
    assert (media.entry, media.kind, media.size) == (entry, entry.media_kind, entry.size)
    assert (media.mime_type, media.file_name) == (entry.mime_type, entry.file_name)
    assert media.dc_id in {1, 2, 4, 5}


async def test_downloads_a_multi_mib_message_exactly(sim: str, tg: SimulatedTelegram) -> None:
    entry = _largest()
    assert entry.size is not None
    media = await tg.resolve(entry)
    data = await _download(tg, media)
    assert len(data) == entry.size
    assert hashlib.sha256(data).hexdigest() == content.expected_sha256(entry.message_id, entry.size)
    done = await client.until_serving(sim, 0)
    assert done["requests"] == {entry.message_id: 1}
    assert done["bytes_sent_by_id"] == {entry.message_id: entry.size}
    assert tg.serving() == 0


async def test_resume_from_an_offset_gives_the_tail(tg: SimulatedTelegram) -> None:
    entry = _largest()
    assert entry.size is not None
    offset = 2 * REQUEST
    tail = await _download(tg, await tg.resolve(entry), offset)
    assert tail == content.read(entry.message_id, entry.size, offset, entry.size - offset)


async def test_serving_counts_open_streams_until_they_are_closed(
    sim: str, tg: SimulatedTelegram
) -> None:
    entries = [_largest(rank) for rank in range(3)]
    await client.set_faults(sim, bandwidth=4_000_000)  # paced: streams stay open a while
    streams = [tg.stream(await tg.resolve(e), 0) for e in entries]
    for stream in streams:
        assert len(await anext(stream)) == REQUEST
    assert tg.serving() == 3
    open_now = await client.until_serving(sim, 3)
    assert open_now["serving_ids"] == sorted(e.message_id for e in entries)
    await streams[0].aclose()
    await client.until_serving(sim, 2, within=1.0)
    for stream in streams[1:]:
        await stream.aclose()
    closed = await client.until_serving(sim, 0, within=1.0)
    assert closed["max_serving"] == 3 and tg.serving() == 0
    await client.reset_stats(sim)
    assert (await client.stats(sim))["max_serving"] == 0


async def test_flood_wait_answers_the_next_requests(sim: str, tg: SimulatedTelegram) -> None:
    entry = _largest()
    media = await tg.resolve(entry)
    await client.set_faults(sim, flood_wait={"message_id": entry.message_id, "seconds": 7,
                                             "times": 2})
    for _ in range(2):
        with pytest.raises(FloodWait) as caught:
            await anext(tg.stream(media, 0))
        assert caught.value.seconds == 7
    assert len(await _download(tg, media)) == entry.size
    assert (await client.stats(sim))["requests"] == {entry.message_id: 3}


async def test_dropped_connection_is_transient_and_resumable(
    sim: str, tg: SimulatedTelegram
) -> None:
    entry = _largest()
    assert entry.size is not None
    media = await tg.resolve(entry)
    await client.set_faults(sim, drop={"message_id": entry.message_id, "after_bytes": 700_000})
    received = []
    with pytest.raises(TransientError):
        async for chunk in tg.stream(media, 0):
            received.append(chunk)
    assert sum(map(len, received)) == REQUEST  # the whole chunks that arrived before the cut
    tail = await _download(tg, media, REQUEST)
    assert b"".join(received) + tail == content.read(entry.message_id, entry.size, 0, entry.size)
    await client.until_serving(sim, 0)


async def test_expired_file_reference_is_refreshed(sim: str, tg: SimulatedTelegram) -> None:
    entry = _largest()
    media = await tg.resolve(entry)
    await client.set_faults(sim, expire_reference={"message_id": entry.message_id, "times": 2})
    assert len(await _download(tg, media)) == entry.size
    await client.set_faults(sim, expire_reference={"message_id": entry.message_id, "times": 50})
    with pytest.raises(TransientError):
        await _download(tg, media)


@pytest.mark.parametrize(
    ("pick", "code"),
    [
        (lambda m: m.deleted, ErrorCode.message_deleted),
        (lambda m: m.forbidden, ErrorCode.access_denied),
        (lambda m: m.media_kind is None, ErrorCode.no_media),
    ],
    ids=["deleted", "forbidden", "no_media"],
)
async def test_unreadable_messages_are_permanent_errors(
    tg: SimulatedTelegram, pick, code: ErrorCode
) -> None:
    message = next(m for m in demo_catalog(FAST.count, FAST.min_size, FAST.max_size) if pick(m))
    with pytest.raises(PermanentError) as caught:
        # With a kept location the refusal comes with the bytes, else with the message.
        await _download(tg, await tg.resolve(message.to_entry()))
    assert caught.value.failure.error is code
    assert caught.value.failure.suggestion


async def test_unknown_message_is_not_found(tg: SimulatedTelegram) -> None:
    unknown = CatalogEntry(message_id=999, chat="sim_demo", telegram_message_id=999_999)
    with pytest.raises(PermanentError) as caught:
        await tg.resolve(unknown)
    assert caught.value.failure.error is ErrorCode.message_not_found


async def test_message_deleted_after_resolve_fails_the_stream(
    sim: str, tg: SimulatedTelegram
) -> None:
    entry = _largest()
    media = await tg.resolve(entry)
    await client.set_faults(sim, delete=[entry.message_id])
    with pytest.raises(PermanentError) as caught:
        await _download(tg, media)
    assert caught.value.failure.error is ErrorCode.message_deleted
    await client.clear_faults(sim)
    assert (await tg.resolve(entry)).size == entry.size


async def test_unreachable_server_is_transient() -> None:
    adapter = SimulatedTelegram(f"http://127.0.0.1:{free_port()}")
    await adapter.start()
    try:
        with pytest.raises(TransientError):
            await adapter.resolve(_largest().model_copy(update={"location": None}))
        with pytest.raises(TransientError):
            await _download(adapter, await adapter.resolve(_largest()))
    finally:
        await adapter.close()


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"not json", "invalid_json"),
        (b"{}", "invalid_faults"),
        (b'{"flood_wait": {"message_id": 1, "seconds": -3}}', "invalid_faults"),
        (b'{"drop": {"message_id": 1}}', "invalid_faults"),
        (b'{"bandwidth": "fast"}', "invalid_faults"),
        (b'{"surprise": 1}', "invalid_faults"),
        (b"[1, 2]", "invalid_faults"),
        (b'{"delete": [12345]}', "unknown_message"),
    ],
)
async def test_faults_endpoint_rejects_bad_input(sim: str, body: bytes, error: str) -> None:
    async with httpx.AsyncClient(base_url=sim) as http:
        response = await http.post("/faults", content=body)
        assert response.status_code == 422
        assert response.json()["error"] == error
        assert (await http.get("/faults")).json()["deleted"] == []  # nothing was applied


async def test_bad_requests_get_json_errors(sim: str) -> None:
    entry = _largest()
    path = f"/chats/{entry.chat}/messages/{entry.telegram_message_id}"
    async with httpx.AsyncClient(base_url=sim) as http:
        answers = {
            "offset": await http.get(f"{path}/content", params={"offset": "-5"}),
            "offset_digit": await http.get(f"{path}/content", params={"offset": "²"}),
            "offset_huge": await http.get(f"{path}/content", params={"offset": "9" * 5000}),
            "past_end": await http.get(f"{path}/content", params={"offset": entry.size + 1}),
            "bad_id": await http.get("/chats/sim_demo/messages/abc"),
            "huge_id": await http.get("/chats/sim_demo/messages/" + "9" * 5000),
            "no_route": await http.get("/nothing/here"),
            "method": await http.put("/stats"),
        }
        assert (await http.get("/healthz")).status_code == 200
    assert {k: (r.status_code, r.json()["error"]) for k, r in answers.items()} == {
        "offset": (422, "invalid_offset"),
        "offset_digit": (422, "invalid_offset"),
        "offset_huge": (422, "invalid_offset"),
        "past_end": (416, "offset_out_of_range"),
        "bad_id": (404, "message_not_found"),
        "huge_id": (404, "message_not_found"),
        "no_route": (404, "not_found"),
        "method": (405, "method_not_allowed"),
    }
