"""A NATS connection that fails inside a command's request (after the gateway saw it
connected) is NATS's 503, not the service's: the port raises as nats-py does then."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tgdl.contracts.commands import BatchAccepted, CancelBatch, CommandReply
from tgdl.gateway.commands import REJECTIONS, CommandClient, orchestrator_unavailable
from tgdl.gateway.errors import NATS_OUTAGES, ApiError


@pytest.mark.parametrize("outage", NATS_OUTAGES)
async def test_a_connection_failing_during_a_request_is_a_503_naming_nats(outage):
    async def request(command, **_):
        raise outage()

    publisher = SimpleNamespace(subject=SimpleNamespace(template="cmd.cancel"), request=request)
    broker = SimpleNamespace(connection=SimpleNamespace(is_connected=True))
    client = CommandClient(broker, {CancelBatch: publisher}, 1.0, service="orchestrator",
                           unavailable=orchestrator_unavailable, reply=CommandReply,
                           rejections=REJECTIONS)
    with pytest.raises(ApiError) as raised:
        await client.call(CancelBatch(batch_id="b"), BatchAccepted)
    assert (raised.value.status, raised.value.body.error) == (503, "nats_unavailable")
    assert raised.value.body.detail == "the connection to NATS was lost during the request"
