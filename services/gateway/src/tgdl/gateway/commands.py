"""Commands to the orchestrator as NATS request/reply; its `CommandReply` becomes either
the `ok` body (parsed by the caller into the model it expects) or an `ApiError`."""

from __future__ import annotations

import json
from typing import Any

from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from pydantic import BaseModel, ValidationError

from tgdl.contracts.commands import Rejection
from tgdl.gateway.errors import ApiError

_START_IT = (
    "Start the orchestrator (`tgdl run` starts every service) and retry; "
    "GET /healthz shows whether NATS and PostgreSQL are reachable."
)


def unavailable(detail: str) -> ApiError:
    return ApiError(503, "orchestrator_unavailable", detail, _START_IT)


class Orchestrator:
    def __init__(self, nc: NATS, timeout: float) -> None:
        self._nc = nc
        self._timeout = timeout

    async def call(self, subject: str, command: BaseModel) -> dict[str, Any]:
        if not self._nc.is_connected:
            raise unavailable("the gateway is not connected to NATS right now")
        try:
            msg = await self._nc.request(subject, command.model_dump_json().encode(),
                                         timeout=self._timeout)
        except NoRespondersError:
            raise unavailable(f"no orchestrator is listening on {subject}") from None
        except TimeoutError:
            raise unavailable(
                f"the orchestrator did not answer within {self._timeout:g} s") from None
        try:
            reply = json.loads(msg.data)
            if reply.get("rejected"):
                r = Rejection.model_validate(reply["rejected"])
                status = r.status if 400 <= r.status <= 599 else 502
                raise ApiError(status, r.error, r.detail, r.suggestion)
            if isinstance(reply.get("ok"), dict):
                return reply["ok"]
        except (ValueError, ValidationError, AttributeError):
            pass
        raise ApiError(502, "bad_gateway", "the orchestrator sent a reply the gateway cannot read",
                       "Check that the gateway and orchestrator run the same version.")
