"""One download per Telegram file where hard links are impossible (another file system,
one without links): the forward gets a copy, with the orchestrator and downloaders on
real NATS and PostgreSQL."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

from test_pipeline import command, pipeline  # noqa: F401  (the fixture, shared)
from waiting import until

from tgdl.bus.eventlog import EventLog
from tgdl.contracts.commands import StartBatch
from tgdl.contracts.events import BatchFinished, FileCompleted
from tgdl.contracts.subjects import Names
from tgdl.simtelegram import client as sim_client
from tgdl.simtelegram.content import expected_sha256


async def test_where_links_fail_a_forward_gets_a_copy_and_nothing_is_fetched_twice(
        pipeline, nc, monkeypatch):  # noqa: F811
    names: Names = pipeline["names"]
    entries = {e.message_id: e for e in pipeline["entries"]}
    forward = next(e for e in entries.values()
                   if e.location and e.location.id != e.message_id)
    original = entries[forward.location.id]

    def no_links(*args, **kwargs):  # the media folder spans two file systems
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
    monkeypatch.setattr(os, "link", no_links)
    await sim_client.reset_stats(pipeline["sim_url"])
    reply = await command(nc, names.cmd_batch_start, StartBatch(
        message_ids=[original.message_id, forward.message_id], max_concurrent=2))
    assert reply.ok is not None, reply.rejected
    log = EventLog(nc.jetstream(), names)

    async def finished():
        events, _ = await log.load(reply.ok.batch_id)
        return events if isinstance(events[-1], BatchFinished) else None
    events = await until(finished, 60, what="batch finished")
    done = {e.message_id: e for e in events if isinstance(e, FileCompleted)}
    assert set(done) == {original.message_id, forward.message_id}
    copied = [e for e in done.values() if e.same_file_as is not None]
    assert len(copied) == 1 and copied[0].link == "copy"
    paths = [Path(e.file_path) for e in done.values()]
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].stat().st_ino != paths[1].stat().st_ino
    assert hashlib.sha256(paths[0].read_bytes()).hexdigest() == expected_sha256(
        original.message_id, original.size)
    stats = await sim_client.stats(pipeline["sim_url"])
    assert set(stats["file_requests"]) == {original.message_id}
    assert stats["bytes_sent"] == original.size
