"""A batch for a message whose Telegram file is already whole on disk under another
message's name: done at the start (linked, no job), unless forced or the copy is gone;
with the orchestrator and downloaders on real NATS and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from test_pipeline import command, pipeline  # noqa: F401  (the fixture, shared)
from waiting import until

from tgdl.bus.eventlog import EventLog
from tgdl.bus.samefile import FileRecords
from tgdl.contracts.catalog import CatalogEntry
from tgdl.contracts.commands import BatchAccepted, StartBatch
from tgdl.contracts.events import (
    BatchEvent,
    BatchFinished,
    BatchStarted,
    FileCompleted,
    PermitGranted,
)
from tgdl.contracts.paths import part_path, parts_path, relative_path
from tgdl.contracts.subjects import Names
from tgdl.simtelegram import client as sim_client


def forwarded(entries: list[CatalogEntry]) -> list[tuple[CatalogEntry, CatalogEntry]]:
    """(the message whose file it is, a forward of it), one pair per file."""
    by_id = {e.message_id: e for e in entries}
    pairs: dict[int, tuple[CatalogEntry, CatalogEntry]] = {}
    for e in entries:
        if e.location is not None and e.location.id != e.message_id:
            pairs.setdefault(e.location.id, (by_id[e.location.id], e))
    return list(pairs.values())


async def start(nc, names: Names, ids: list[int], force: bool = False) -> BatchAccepted:
    reply = await command(nc, names.cmd_batch_start, StartBatch(message_ids=ids, force=force))
    assert reply.ok is not None, reply.rejected
    return reply.ok


async def finished(nc, names: Names, batch_id: str) -> list[BatchEvent]:
    log = EventLog(nc.jetstream(), names)

    async def done():
        events, _ = await log.load(batch_id)
        return events if events and isinstance(events[-1], BatchFinished) else None
    return await until(done, 60, what=f"{batch_id} finished")


async def recorded(nc, names: Names, entry: CatalogEntry, message_id: int) -> Path:
    """Wait until the files bucket says `message_id`'s copy of the file is complete."""
    records = await FileRecords.open(nc.jetstream(), names)

    async def complete():
        found = await records.get(entry.location.file_key)
        if found and found[0].relative_path and found[0].message_id == message_id:
            return found[0].relative_path
    return Path(await until(complete, 30, what=f"record of message {message_id}"))


async def test_a_forward_of_a_file_on_disk_is_done_at_the_start_and_force_fetches_it(
        pipeline, nc):  # noqa: F811
    names: Names = pipeline["names"]
    media: Path = pipeline["media"]
    original, forward = forwarded(pipeline["entries"])[0]
    first = await start(nc, names, [original.message_id])
    await finished(nc, names, first.batch_id)
    source = media / await recorded(nc, names, original, original.message_id)

    # an unfinished download of the forward's own, say from a paused batch
    own = media / relative_path(forward)
    own.parent.mkdir(parents=True, exist_ok=True)
    part_path(own).write_bytes(b"partial")
    parts_path(own).write_text("tgdl-parts 1\n")

    await sim_client.reset_stats(pipeline["sim_url"])
    accepted = await start(nc, names, [forward.message_id])
    assert (accepted.started, accepted.already_downloaded) == ([], [forward.message_id])
    events = await finished(nc, names, accepted.batch_id)
    assert not part_path(own).exists() and not parts_path(own).exists()  # whole now
    started = events[0]
    assert isinstance(started, BatchStarted) and started.to_download == []
    [done] = started.already_downloaded
    assert (done.message_id, done.same_file_as) == (forward.message_id, original.message_id)
    assert not [e for e in events if isinstance(e, PermitGranted)]  # no job, no permit
    assert events[-1].completed == 1 and events[-1].failed == 0
    assert Path(done.file_path).stat().st_ino == source.stat().st_ino  # its own name, linked
    assert (await sim_client.stats(pipeline["sim_url"]))["file_requests"] == {}

    # force: fresh bytes, from Telegram, though a copy is there
    forced = await start(nc, names, [forward.message_id], force=True)
    assert (forced.started, forced.already_downloaded) == ([forward.message_id], [])
    events = await finished(nc, names, forced.batch_id)
    [completed] = [e for e in events if isinstance(e, FileCompleted)]
    assert completed.same_file_as is None
    stats = await sim_client.stats(pipeline["sim_url"])
    assert stats["bytes_sent"] == original.size


async def test_a_record_whose_copy_was_deleted_leads_to_a_download(pipeline, nc):  # noqa: F811
    names: Names = pipeline["names"]
    media: Path = pipeline["media"]
    original, forward = forwarded(pipeline["entries"])[1]
    first = await start(nc, names, [original.message_id])
    await finished(nc, names, first.batch_id)
    (media / await recorded(nc, names, original, original.message_id)).unlink()

    await sim_client.reset_stats(pipeline["sim_url"])
    accepted = await start(nc, names, [forward.message_id])
    assert (accepted.started, accepted.already_downloaded) == ([forward.message_id], [])
    events = await finished(nc, names, accepted.batch_id)
    [completed] = [e for e in events if isinstance(e, FileCompleted)]
    assert completed.same_file_as is None  # fetched, not linked to a file that is gone
    assert (await sim_client.stats(pipeline["sim_url"]))["bytes_sent"] == original.size

    # the forward's fresh copy is the record now: the original, gone from disk, links it
    await recorded(nc, names, original, forward.message_id)
    again = await start(nc, names, [original.message_id])
    assert (again.started, again.already_downloaded) == ([], [original.message_id])
    started = (await finished(nc, names, again.batch_id))[0]
    assert started.already_downloaded[0].same_file_as == forward.message_id
    assert Path(started.already_downloaded[0].file_path).read_bytes() == Path(
        completed.file_path).read_bytes()
