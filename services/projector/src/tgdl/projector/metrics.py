"""What this projector applied and how far behind the streams it is, counted where it
happens (`Projector`) and served on its own metrics port (TGDL_METRICS_PORT, see
`tgdl.runtime.metrics`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

APPLIED = Counter("tgdl_projector_messages_applied",
                  "Stream messages folded into the read model, by stream", ["stream"])
SKIPPED = Counter("tgdl_projector_messages_skipped",
                  "Redeliveries at or below the stored position, skipped")
UNREADABLE = Counter("tgdl_projector_messages_unreadable",
                     "Messages no release can read, skipped (their position still advances)")
TRANSACTIONS = Counter("tgdl_projector_transactions",
                       "Read-model transactions committed, by what they wrote (events and "
                       "outcomes, or held progress)", ["kind"])
PROGRESS_ROWS = Counter("tgdl_projector_progress_rows",
                        "Job rows written from progress (the newest report of each job, about "
                        "once per second)")
LAG_MESSAGES = Gauge("tgdl_projector_lag_messages",
                     "Messages of the stream known to this projector and not applied yet",
                     ["stream"])
LAG_SECONDS = Gauge("tgdl_projector_lag_seconds",
                    "While messages wait: seconds since the newest applied message was "
                    "stored in the stream (0 when caught up)", ["stream"])
APPLY_DELAY = Histogram("tgdl_projector_apply_delay_seconds",
                        "From a batch event or outcome stored in its stream to its read-model "
                        "transaction committed", ["stream"],
                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
                                 60))
