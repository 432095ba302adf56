"""What flows between orchestrator and downloaders: jobs, leases, progress and outcomes."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from tgdl.contracts.catalog import CatalogEntry
from tgdl.contracts.errors import Failure
from tgdl.contracts.status import JobState, OutcomeStatus, Priority
from tgdl.contracts.versioning import Versioned, nest_failure


class DownloadJob(BaseModel):
    """Download one message's media. Published on `Names.download_jobs` with
    ``Nats-Msg-Id: job_id`` so a re-publish after a crash is deduplicated."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    entry: CatalogEntry
    force: bool = False
    # The requesting batch's naming template (None: the default layout): where the file
    # goes under the media root, see tgdl.contracts.paths.relative_path.
    name_template: str | None = None
    priority: Priority = Priority.normal  # where it waits for room under the global cap
    # The entry's chat's other names (tgdl.db.catalog.every_name), given when the
    # allow-list names the chat by one of them: the downloaders check it, knowing no catalog.
    chat_names: tuple[str, ...] = ()


# The states a running job reports (a subset of JobState).
ProgressState = Literal["starting", "downloading", "waiting", "retrying"]


class DownloadProgress(BaseModel):
    """Published a few times per second on `Names.file_progress(message_id)`."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    message_id: int
    state: ProgressState
    downloaded_size: int
    total_size: int
    download_speed: int = 0  # bytes/s, smoothed
    estimated_time_remaining: int | None = None  # seconds
    wait_seconds: int | None = None  # state "waiting": flood wait still to sit out
    attempt: int = 1
    at: datetime

    @property
    def job_state(self) -> JobState:
        return JobState(self.state)


class DownloadOutcome(Versioned):
    """Published once per job on `Names.file_done(message_id)`; stored for 30 days, so
    versioned like the batch events (v2 embeds the failure; v1 had flat fields)."""

    model_config = ConfigDict(frozen=True)
    UPCASTERS: ClassVar = {1: nest_failure}

    v: Literal[2] = 2
    job_id: str
    message_id: int
    status: OutcomeStatus
    parties: list[str] = []  # batches that were waiting for this job when it ended
    file_path: str | None = None
    relative_path: str | None = None
    size: int | None = None
    failure: Failure | None = None  # why it failed or was cancelled
    at: datetime
    # Every part matched Telegram's SHA-256 range hashes (False: Telegram gave none to
    # check against; None: not completed, or from a downloader that did not check).
    hash_verified: bool | None = None
    # Parts fetched again because they did not match those hashes (completed jobs).
    parts_refetched: int | None = None
    # Completed without a download: the same Telegram file (same FileLocation.file_key)
    # was already downloaded for this message, and it was linked ("hard_link") or, where
    # links are impossible, copied ("copy") to this message's path.
    same_file_as: int | None = None
    link: Literal["hard_link", "copy"] | None = None
    # Cancelled for a pause: the bytes its .part file keeps for the resume.
    downloaded_size: int | None = None


class FileRecord(BaseModel):
    """Value in the files bucket under a `FileLocation.file_key`: the job fetching that
    Telegram file now (`relative_path` None), or where it was stored once complete. A
    job of another message with the same file waits for the first, then links to it."""

    job_id: str
    message_id: int
    relative_path: str | None = None  # under the media root, once the file is complete
    size: int | None = None


class Lease(BaseModel):
    """Value in the leases bucket under key ``str(message_id)``: at most one job per
    message at a time, and the parties (batch ids) that wait for its outcome."""

    job_id: str
    parties: list[str]
    # Stream sequence of the job message whose downloader holds the lease: a second copy
    # of the same job (re-queued after a long outage) is dropped instead of writing the
    # same .part file at the same time.
    claimed_by: int | None = None
    # A party that asked for force joined: the job must fetch again even if the file exists.
    force: bool = False
    # A party left because its batch was paused: when no party is left, the job stops but
    # keeps its .part file for the resume (a cancel alone discards it).
    keep_part: bool = False
    # The parties that left for a pause: a job that completes the file anyway tells them
    # too (their file is whole, so it is completed, not paused).
    paused: list[str] = []
    # Set by the downloader when the job has ended, before it publishes the outcome and
    # deletes the lease: a downloader that crashes in between finds it on redelivery and
    # completes the hand-over, so no waiting party is ever forgotten.
    outcome: DownloadOutcome | None = None
