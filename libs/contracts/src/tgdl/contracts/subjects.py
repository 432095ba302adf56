"""Every NATS subject, stream, consumer and bucket name, in one place.

All names hang off a namespace prefix (default ``tgdl``) so that several deployments, or
several tests, can share one NATS server without seeing each other's data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# What an id may be inside a subject: one token, no wildcard, no separator. Checked where
# the subject is built, so no caller can widen a subscription or publish beside it.
# (`{name}`: the AsyncAPI document's parameter, never a wildcard to NATS.)
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}|\{[a-z_]+\}")


def token(value: int | str) -> str:
    text = str(value)
    if not _TOKEN.fullmatch(text):
        raise ValueError(f"{text!r} cannot be part of a NATS subject")
    return text


@dataclass(frozen=True)
class Names:
    prefix: str = "tgdl"

    # --- streams -------------------------------------------------------------------------
    @property
    def _upper(self) -> str:
        return self.prefix.upper().replace(".", "_").replace("-", "_")

    @property
    def events_stream(self) -> str:
        """Per-batch event logs: the source of truth."""
        return f"{self._upper}_EVENTS"

    @property
    def jobs_stream(self) -> str:
        """Work queue of download jobs."""
        return f"{self._upper}_JOBS"

    @property
    def waiting_stream(self) -> str:
        """Granted jobs waiting for room under the global cap, by priority."""
        return f"{self._upper}_WAITING"

    @property
    def outcomes_stream(self) -> str:
        """How each download job ended (completed / failed / cancelled)."""
        return f"{self._upper}_OUTCOMES"

    @property
    def progress_stream(self) -> str:
        """Latest progress per file (one message kept per subject)."""
        return f"{self._upper}_PROGRESS"

    @property
    def advisories_stream(self) -> str:
        """JetStream's own advisories we must not miss (a job out of deliveries)."""
        return f"{self._upper}_ADVISORIES"

    # --- subjects ------------------------------------------------------------------------
    def batch_events(self, batch_id: str) -> str:
        return f"{self.prefix}.evt.batch.{token(batch_id)}"

    @property
    def all_batch_events(self) -> str:
        return f"{self.prefix}.evt.batch.*"

    @property
    def download_jobs(self) -> str:
        return f"{self.prefix}.job.download"

    def waiting_job(self, priority: str, message_id: int | str) -> str:
        return f"{self.prefix}.job.waiting.{token(priority)}.{token(message_id)}"

    def waiting_jobs(self, priority: str = "*", message_id: int | str = "*") -> str:
        """A filter: the waiting jobs of a priority, of a message, or (default) all."""
        p = priority if priority == "*" else token(priority)
        m = message_id if message_id == "*" else token(message_id)
        return f"{self.prefix}.job.waiting.{p}.{m}"

    def file_progress(self, message_id: int | str) -> str:
        return f"{self.prefix}.file.{token(message_id)}.progress"

    def file_done(self, message_id: int | str) -> str:
        return f"{self.prefix}.file.{token(message_id)}.done"

    @property
    def all_file_progress(self) -> str:
        return f"{self.prefix}.file.*.progress"

    @property
    def all_file_done(self) -> str:
        return f"{self.prefix}.file.*.done"

    def batch_progress(self, batch_id: str) -> str:
        """Core-NATS snapshots of a batch's status (same body as the HTTP status)."""
        return f"{self.prefix}.batch.{token(batch_id)}.progress"

    # --- request/reply commands (gateway or any NATS client -> orchestrator) --------------
    @property
    def cmd_batch_start(self) -> str:
        return f"{self.prefix}.cmd.batch.start"

    @property
    def cmd_batch_cancel(self) -> str:
        return f"{self.prefix}.cmd.batch.cancel"

    @property
    def cmd_batch_pause(self) -> str:
        return f"{self.prefix}.cmd.batch.pause"

    @property
    def cmd_batch_resume(self) -> str:
        return f"{self.prefix}.cmd.batch.resume"

    @property
    def cmd_batch_concurrency(self) -> str:
        return f"{self.prefix}.cmd.batch.concurrency"

    @property
    def cmd_batch_priority(self) -> str:
        return f"{self.prefix}.cmd.batch.priority"

    @property
    def cmd_single_cancel(self) -> str:
        return f"{self.prefix}.cmd.single.cancel"

    # --- request/reply commands to the catalog service --------------------------------------
    @property
    def cmd_catalog_sync(self) -> str:
        return f"{self.prefix}.cmd.catalog.sync"

    @property
    def cmd_catalog_fetch(self) -> str:
        return f"{self.prefix}.cmd.catalog.fetch"

    @property
    def cmd_rule_create(self) -> str:
        return f"{self.prefix}.cmd.rule.create"

    @property
    def cmd_rule_update(self) -> str:
        return f"{self.prefix}.cmd.rule.update"

    @property
    def cmd_rule_delete(self) -> str:
        return f"{self.prefix}.cmd.rule.delete"

    # --- consumers and buckets -------------------------------------------------------------
    @property
    def downloader_consumer(self) -> str:
        return "downloaders"

    @property
    def orchestrator_outcomes_consumer(self) -> str:
        return "orchestrator-outcomes"

    @property
    def orchestrator_advisories_consumer(self) -> str:
        return "orchestrator-advisories"

    @property
    def leases_bucket(self) -> str:
        """message_id -> the job currently downloading it and who waits for it."""
        return f"{self._upper}_leases"

    @property
    def open_batches_bucket(self) -> str:
        """batch ids the orchestrator has not finished with (its restart checklist)."""
        return f"{self._upper}_open_batches"

    @property
    def flood_bucket(self) -> str:
        """Telegram account -> until when every replica must hold off (flood wait)."""
        return f"{self._upper}_flood"

    @property
    def files_bucket(self) -> str:
        """Telegram file (FileLocation.file_key) -> the job downloading it, then where the
        finished file is: a file forwarded into several messages is fetched once."""
        return f"{self._upper}_files"

    @property
    def idempotency_bucket(self) -> str:
        """Idempotency-Key of a start request -> the request's digest and its answer (a day)."""
        return f"{self._upper}_idempotency"

    def max_deliveries_advisory(self) -> str:
        return (
            f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES."
            f"{self.jobs_stream}.{self.downloader_consumer}"
        )
