"""Status names, in one place: what a file shows to clients, what a batch adds up to, what
a download job reports. StrEnums, so they compare equal to (and serialise as) their names."""

from __future__ import annotations

from enum import StrEnum


class BatchKind(StrEnum):
    batch = "batch"  # POST /api/media/batch-download
    single = "single"  # the single-file API: a one-file batch


class Priority(StrEnum):
    """Which jobs go first under the global cap (see `tgdl.bus.admission` for the rule)."""

    high = "high"
    normal = "normal"
    low = "low"

    @property
    def rank(self) -> int:
        """0 goes first."""
        return PRIORITY_ORDER.index(self)


PRIORITY_ORDER = (Priority.high, Priority.normal, Priority.low)


class FileStatus(StrEnum):
    """One file of a batch, as clients see it."""

    pending = "pending"  # waiting for a permit of its batch
    queued = "queued"  # has a permit; its job waits for a downloader
    downloading = "downloading"
    waiting = "waiting"  # a Telegram flood wait: it resumes by itself
    paused = "paused"  # stopped by a pause of its batch; its .part file waits for a resume
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"


class OverallStatus(StrEnum):
    pending = "pending"
    in_progress = "in_progress"
    paused = "paused"  # no file gets a permit until the batch is resumed
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"


class OutcomeStatus(StrEnum):
    """How a download job ended."""

    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"


class JobState(StrEnum):
    """A download job's latest known state (the read model's `jobs.state`)."""

    queued = "queued"
    starting = "starting"
    downloading = "downloading"
    waiting = "waiting"
    retrying = "retrying"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL_FILE_STATUSES = frozenset({FileStatus.completed, FileStatus.failed,
                                    FileStatus.cancelled})
FINISHED_BATCH_STATUSES = frozenset({OverallStatus.completed, OverallStatus.failed,
                                     OverallStatus.cancelled})
TERMINAL_JOB_STATES = frozenset({JobState.completed, JobState.failed, JobState.cancelled})
RUNNING_JOB_STATES = frozenset({JobState.starting, JobState.downloading, JobState.retrying})
