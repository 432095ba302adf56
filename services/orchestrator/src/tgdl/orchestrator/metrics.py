"""What this orchestrator decided and carried out, counted where it happens (the
repository's appends, the executor, the handlers) and served on its own metrics port
(TGDL_METRICS_PORT, see `tgdl.runtime.metrics`). The decider stays pure: these count the
events it produced once they are appended.

The permit gauges are the batches as this replica last saw them: exact with one
orchestrator; with several, each shows the batches it served (Prometheus `max` them)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter, Gauge

from tgdl.contracts.events import (
    BatchCancelled,
    BatchEvent,
    BatchFinished,
    BatchStarted,
    PermitGranted,
)

APPENDED = Counter("tgdl_orchestrator_events_appended",
                   "Batch events this orchestrator decided and appended, by type", ["type"])
APPENDS = Counter("tgdl_orchestrator_appends",
                  "Messages appended to batch logs: one per decision, holding its events "
                  "(each an fsynced publish)")
CONFLICTS = Counter("tgdl_orchestrator_append_conflicts",
                    "Appends refused because another replica wrote the batch first (the "
                    "command is decided again)")
PERMITS_GRANTED = Counter("tgdl_orchestrator_permits_granted",
                          "Permits granted: files allowed to start downloading")
BATCHES_STARTED = Counter("tgdl_orchestrator_batches_started",
                          "Batches started, by kind (batch or single)", ["kind"])
BATCHES_FINISHED = Counter("tgdl_orchestrator_batches_finished",
                           "Batches that ended on their own, by overall status", ["status"])
BATCHES_CANCELLED = Counter("tgdl_orchestrator_batches_cancelled", "Batches cancelled")
OUTCOMES = Counter("tgdl_orchestrator_outcomes_handled",
                   "Download outcomes this orchestrator carried out, by status", ["status"])
JOBS_PUBLISHED = Counter("tgdl_orchestrator_jobs_published",
                         "Download jobs queued for the downloaders (a grant that joins a "
                         "download already under way queues none)")
JOBS_GIVEN_UP = Counter("tgdl_orchestrator_jobs_given_up",
                        "Jobs JetStream stopped redelivering, failed as worker_lost")

PERMITS_IN_USE = Gauge("tgdl_orchestrator_batch_permits_in_use",
                       "Permits an open batch holds (files it has in flight)", ["batch_id"])
BATCH_LIMIT = Gauge("tgdl_orchestrator_batch_max_concurrent",
                    "An open batch's max_concurrent", ["batch_id"])
PERMITS_HELD = Gauge("tgdl_orchestrator_permits_in_use",
                     "Permits held across the open batches (compare "
                     "tgdl_orchestrator_global_cap)")
GLOBAL_CAP = Gauge("tgdl_orchestrator_global_cap",
                   "Downloads allowed in flight across all batches (TGDL_GLOBAL_CAP)")
OPEN_BATCHES = Gauge("tgdl_orchestrator_open_batches", "Open batches this orchestrator holds")

_held: dict[str, int] = {}  # batch id -> permits, for the total


def count_appended(events: Iterable[BatchEvent]) -> None:
    """One decision's events, appended as one message."""
    APPENDS.inc()
    for event in events:
        APPENDED.labels(event.type).inc()
        match event:
            case PermitGranted():
                PERMITS_GRANTED.inc()
            case BatchStarted(kind=kind):
                BATCHES_STARTED.labels(kind).inc()
            case BatchFinished(overall_status=status):
                BATCHES_FINISHED.labels(status).inc()
            case BatchCancelled():
                BATCHES_CANCELLED.inc()


def batch_seen(batch_id: str, running: int, max_concurrent: int, is_open: bool) -> None:
    """A batch as the repository now holds it: its permits while open, gone once closed."""
    if is_open:
        _held[batch_id] = running
        PERMITS_IN_USE.labels(batch_id).set(running)
        BATCH_LIMIT.labels(batch_id).set(max_concurrent)
    elif _held.pop(batch_id, None) is not None:
        PERMITS_IN_USE.remove(batch_id)
        BATCH_LIMIT.remove(batch_id)
    PERMITS_HELD.set(sum(_held.values()))
    OPEN_BATCHES.set(len(_held))
