"""One download per Telegram file, the decision: given what the files bucket says about
a job's file, fetch it, link to a finished copy, or wait for the job fetching it.

Pure, so every case is unit-tested; the worker gathers the facts (the record, the size of
the file it names, whether its holder stopped refreshing it) and carries the choice out.
"""

from __future__ import annotations

from dataclasses import dataclass

from tgdl.bus.samefile import complete_copy
from tgdl.contracts.jobs import DownloadJob, FileRecord


@dataclass(frozen=True)
class Fetch:
    """Download it (after claiming the record at the revision it was seen at)."""


@dataclass(frozen=True)
class LinkTo:
    """The same file is complete at `relative_path` (for message `message_id`)."""

    relative_path: str
    message_id: int


@dataclass(frozen=True)
class WaitFor:
    """Job `job_id` is fetching the same file right now: wait, then link to it."""

    job_id: str


Choice = Fetch | LinkTo | WaitFor


def choose(job: DownloadJob, own_path: str, record: FileRecord | None,
           source_size: int | None, holder_gone: bool, waited_for: str | None = None
           ) -> Choice:
    """`own_path`: where this job's file goes. `source_size`: the size of the file the
    record names, if it exists (`tgdl.bus.samefile.copy_size`). `holder_gone`: the
    record of a job in progress was not refreshed for longer than a live job ever leaves
    it. `waited_for`: the job this one waited for (its result is fresh, even for a job
    with `force`)."""
    if record is None:
        return Fetch()
    if record.relative_path is not None:  # complete somewhere
        stale_for_force = job.force and record.job_id != waited_for
        if stale_for_force or not complete_copy(record, own_path, job.entry.size,
                                                source_size):
            return Fetch()
        return LinkTo(record.relative_path, record.message_id)
    if record.job_id == job.job_id or holder_gone:
        return Fetch()  # ours (a redelivery resumes it), or its holder died: take it over
    return WaitFor(record.job_id)
