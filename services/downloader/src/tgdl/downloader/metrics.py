"""What this downloader replica did, counted where it happens (the worker) and served on
its own metrics port (TGDL_METRICS_PORT, see `tgdl.runtime.metrics`). Each replica counts
only its own work; Prometheus sums the replicas."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from tgdl.contracts.jobs import DownloadOutcome
from tgdl.contracts.status import OutcomeStatus

STARTED = Counter("tgdl_downloader_downloads_started",
                  "Downloads this replica began (a retried or resumed job begins again)")
COMPLETED = Counter("tgdl_downloader_downloads_completed",
                    "Downloads this replica finished with the whole file in place")
FAILED = Counter("tgdl_downloader_downloads_failed",
                 "Downloads this replica ended as failed, by error code", ["reason"])
CANCELLED = Counter("tgdl_downloader_downloads_cancelled",
                    "Downloads this replica stopped because nobody wanted them (cancel, pause)")
RETRIES = Counter("tgdl_downloader_retries",
                  "Jobs handed back to the queue to be tried again (a network error, a "
                  "shutdown)")
BYTES = Counter("tgdl_downloader_bytes",
                "Bytes fetched from Telegram and stored in .part files or finished files")
IN_FLIGHT = Gauge("tgdl_downloader_downloads_in_flight",
                  "Downloads this replica is running now (each holds one of its slots)")
FLOOD_WAITS = Counter("tgdl_downloader_flood_waits",
                      "Flood waits Telegram answered this replica with")
FLOOD_WAIT_SECONDS = Counter("tgdl_downloader_flood_wait_seconds",
                             "Seconds of the flood waits Telegram asked this replica to sit out")
WAITING = Gauge("tgdl_downloader_files_waiting_on_flood",
                "Downloads sitting out the account's flood wait now")
PARTS_REFETCHED = Counter("tgdl_downloader_parts_refetched",
                          "Parts fetched again because they failed Telegram's hashes")
HASH_VERIFIED = Counter("tgdl_downloader_hash_verified",
                        "Completed downloads whose every part matched Telegram's SHA-256 hashes")


def count_outcome(outcome: DownloadOutcome) -> None:
    """Once per outcome this replica hands over."""
    if outcome.status == OutcomeStatus.completed:
        COMPLETED.inc()
        if outcome.hash_verified:
            HASH_VERIFIED.inc()
    elif outcome.status == OutcomeStatus.failed:
        FAILED.labels(outcome.failure.error if outcome.failure else "unknown").inc()
    else:
        CANCELLED.inc()
