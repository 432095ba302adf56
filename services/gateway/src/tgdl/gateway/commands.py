"""Commands to the orchestrator as NATS request/reply. Its answer is a domain result or
a rejection with a reason; this module alone decides what a rejection means in HTTP
(status code, error code, what to do)."""

from __future__ import annotations

from typing import TypeVar

from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from pydantic import BaseModel, ValidationError

from tgdl.contracts.commands import CommandReply, RejectReason
from tgdl.gateway.errors import ApiError

Result = TypeVar("Result", bound=BaseModel)

# reason -> (HTTP status, error code in the body, suggestion)
REJECTIONS: dict[RejectReason, tuple[int, str, str]] = {
    RejectReason.invalid_command: (
        422, "invalid_request", "Fix the field named in the detail and send the request again."),
    RejectReason.too_many_files: (
        422, "too_many_files", "Split the message ids into several smaller batches."),
    RejectReason.batch_not_found: (
        404, "batch_not_found", "Use the batch_id returned by POST /api/media/batch-download."),
    RejectReason.internal: (
        502, "orchestrator_failed",
        "Retry in a moment; if it persists, check the orchestrator's logs."),
}


def orchestrator_unavailable(detail: str) -> ApiError:
    return ApiError(503, "orchestrator_unavailable", detail,
                    "Start the orchestrator (`tgdl run` starts every service) and retry; "
                    "GET /healthz shows whether NATS and PostgreSQL are reachable.")


def nats_unavailable() -> ApiError:
    return ApiError(503, "nats_unavailable", "the gateway is not connected to NATS right now",
                    "Check that nats-server is running and reachable, then retry.")


class OrchestratorClient:
    """Sends commands to whichever orchestrator replica answers first."""

    def __init__(self, nc: NATS, timeout: float) -> None:
        self._nc = nc
        self._timeout = timeout

    async def call(self, subject: str, command: BaseModel, expect: type[Result]) -> Result:
        if not self._nc.is_connected:
            raise nats_unavailable()
        try:
            msg = await self._nc.request(subject, command.model_dump_json().encode(),
                                         timeout=self._timeout)
        except NoRespondersError:
            raise orchestrator_unavailable(f"no orchestrator is listening on {subject}") from None
        except TimeoutError:
            raise orchestrator_unavailable(
                f"the orchestrator did not answer within {self._timeout:g} s") from None
        try:
            reply = CommandReply.model_validate_json(msg.data)
        except ValidationError:
            reply = CommandReply()
        if reply.rejected is not None:
            status, error, suggestion = REJECTIONS[reply.rejected.reason]
            raise ApiError(status, error, reply.rejected.detail, suggestion)
        if isinstance(reply.ok, expect):
            return reply.ok
        raise ApiError(502, "bad_gateway", "the orchestrator sent a reply the gateway cannot read",
                       "Check that the gateway and orchestrator run the same version.")
