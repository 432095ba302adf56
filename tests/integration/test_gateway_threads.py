"""The gateway answers a status request on its event loop: FastAPI runs a synchronous
dependency (or route) in a worker thread, and under load every such thread round trip
lands in the status latency."""

from __future__ import annotations

from datetime import UTC, datetime

import anyio.to_thread
import pytest

from tgdl.contracts.catalog import CatalogEntry, MediaKind
from tgdl.contracts.events import BatchStarted, PermitGranted
from tgdl.gateway.settings import GatewaySettings
from tgdl.projector.fold import fold_event
from tgdl.projector.sql import apply_changes

AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def settings(servers, isolation) -> GatewaySettings:
    return GatewaySettings(
        nats_url=servers.nats_url, database_url=servers.database_url,
        namespace=isolation.namespace, db_schema=isolation.schema,
        media_root=isolation.media_root,
    )


async def test_reads_take_no_worker_thread(client, db, monkeypatch):
    entry = CatalogEntry(message_id=1, chat="chan", telegram_message_id=901,
                         media_kind=MediaKind.photo, file_name="p1.jpg", size=1000)
    for event in (BatchStarted(batch_id="b", at=AT, kind="batch", max_concurrent=1,
                               force=False, requested_ids=[1], to_download=[entry],
                               already_downloaded=[], failed_to_start=[]),
                  PermitGranted(batch_id="b", at=AT, message_id=1, job_id="b:1")):
        await apply_changes(db, fold_event(event))
    hops: list[object] = []
    real = anyio.to_thread.run_sync

    async def counted(func, *args, **kwargs):
        hops.append(func)
        return await real(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counted)
    for path in ("/api/media/batch-status/b", "/api/media/batches",
                 "/api/media/status/1", "/api/messages"):
        response = await client.get(path)
        assert response.status_code == 200, (path, response.text)
    assert hops == []
