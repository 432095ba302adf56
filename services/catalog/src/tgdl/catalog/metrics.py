"""What this catalog service did, counted where it happens and served on its own metrics
port (TGDL_METRICS_PORT, see `tgdl.runtime.metrics`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

ROUNDS = Counter("tgdl_catalog_sync_rounds",
                 "Syncs of the watched chats followed by the rules' starts, by outcome",
                 ["outcome"])
RULE_BATCHES = Counter("tgdl_catalog_rule_batches_started",
                       "Batches watch rules started (accepted by an orchestrator)")
RULE_FILES = Counter("tgdl_catalog_rule_files_started",
                     "Messages watch rules started")
START_RETRIES = Counter("tgdl_catalog_rule_start_retries",
                        "Rule starts left for the next round (no orchestrator answered, or "
                        "it refused for now)")
LAST_ROUND = Gauge("tgdl_catalog_last_round_timestamp_seconds",
                   "When the last successful sync round ended (Unix time)")
