"""Commands to the orchestrator (and, through the same client, to the catalog service)
as NATS request/reply. An answer is a domain result or a rejection with a reason; this
module alone decides what a rejection, a silence or an outage means in HTTP (status
code, error code, what to do)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from faststream.nats import NatsBroker
from faststream.nats.publisher.usecase import LogicPublisher
from nats.errors import NoRespondersError
from pydantic import BaseModel, ValidationError

from tgdl.bus.broker import nats_broker
from tgdl.contracts.commands import (
    CancelBatch,
    CancelSingle,
    CommandReply,
    PauseBatch,
    RejectReason,
    ResumeBatch,
    SetConcurrency,
    SetPriority,
    StartBatch,
)
from tgdl.gateway.errors import NATS_OUTAGES, RETRY_AFTER, ApiError, nats_unavailable
from tgdl.gateway.settings import GatewaySettings

Result = TypeVar("Result", bound=BaseModel)

# reason -> (HTTP status, error code in the body, suggestion)
REJECTIONS: dict[RejectReason, tuple[int, str, str]] = {
    RejectReason.invalid_command: (
        422, "invalid_request", "Fix the field named in the detail and send the request again."),
    RejectReason.too_many_files: (
        422, "too_many_files", "Split the message ids into several smaller batches."),
    RejectReason.storage_full: (
        507, "storage_full",
        "NATS has no room for more batch logs: raise TGDL_EVENTS_MAX_MSGS and run "
        "`tgdl migrate`, or wait until old batches age out."),
    RejectReason.batch_not_found: (
        404, "batch_not_found", "Use the batch_id returned by POST /api/media/batch-download."),
    RejectReason.internal: (
        502, "orchestrator_failed",
        "Retry in a moment; if it persists, check the orchestrator's logs."),
}


def orchestrator_unavailable(detail: str) -> ApiError:
    return ApiError(503, "orchestrator_unavailable", detail,
                    "Start the orchestrator (`tgdl run` starts every service) and retry; "
                    "GET /healthz shows whether NATS and PostgreSQL are reachable.",
                    headers={"Retry-After": RETRY_AFTER})


def create_broker(settings: GatewaySettings) -> tuple[NatsBroker, CommandClient]:
    """The gateway's NATS side: the commands it sends (documented for AsyncAPI; nothing
    connects here). Status comes from PostgreSQL and live snapshots are subscribed per
    request (see `batches`), so it declares no subscriber."""
    names = settings.names
    broker = nats_broker(settings.nats_url, "tgdl-gateway",
                         description="tgdl gateway: turns HTTP requests into commands")
    # command -> (subject, channel title, what it asks); every one is request/reply,
    # answered by an orchestrator with a CommandReply
    commands: dict[type[BaseModel], tuple[str, str, str]] = {
        StartBatch: (names.cmd_batch_start, "startBatch",
                     "Start a batch (or a single-file download)"),
        CancelBatch: (names.cmd_batch_cancel, "cancelBatch", "Cancel a batch"),
        CancelSingle: (names.cmd_single_cancel, "cancelSingle",
                       "Cancel the single-file requests of one message"),
        PauseBatch: (names.cmd_batch_pause, "pauseBatch", "Pause a batch"),
        ResumeBatch: (names.cmd_batch_resume, "resumeBatch", "Resume a paused batch"),
        SetConcurrency: (names.cmd_batch_concurrency, "setConcurrency",
                         "Change a batch's max_concurrent"),
        SetPriority: (names.cmd_batch_priority, "setPriority", "Change a batch's priority"),
    }
    sends = {
        model: broker.publisher(subject, schema=model, title=title,
                                description=f"{what}: request/reply, answered by an "
                                            "orchestrator with a CommandReply")
        for model, (subject, title, what) in commands.items()
    }
    return broker, CommandClient(broker, sends, settings.command_timeout,
                                 service="orchestrator", unavailable=orchestrator_unavailable,
                                 reply=CommandReply, rejections=REJECTIONS)


class CommandClient:
    """Sends one service's commands to whichever of its replicas answers first, and
    alone decides what its answer, or its silence, means in HTTP: nobody listening or
    no answer in time is the service's own 503, a lost NATS connection is NATS's 503, a
    rejection is the row of `rejections` for its reason, and a reply this gateway
    cannot read is a 502."""

    def __init__(self, broker: NatsBroker, sends: dict[type[BaseModel], LogicPublisher],
                 timeout: float, *, service: str, unavailable: Callable[[str], ApiError],
                 reply: type[BaseModel],
                 rejections: Mapping[Any, tuple[int, str, str]]) -> None:
        self._broker = broker
        self._sends = sends
        self._timeout = timeout
        self._service = service  # as in "no orchestrator is listening"
        self._unavailable = unavailable
        self._reply = reply  # a model with an `ok` result and a `rejected` reason
        self._rejections = rejections

    async def call(self, command: BaseModel, expect: type[Result]) -> Result:
        if not self._broker.connection.is_connected:
            raise nats_unavailable()
        publisher = self._sends[type(command)]
        subject = publisher.subject.template
        try:
            msg = await publisher.request(command, timeout=self._timeout)
        except NoRespondersError:
            raise self._unavailable(f"no {self._service} is listening on {subject}") from None
        except NATS_OUTAGES:
            raise nats_unavailable("the connection to NATS was lost during the request") \
                from None
        except TimeoutError:
            # A request sent while the connection drops waits in the client's buffer and
            # times out: that is NATS being down, not the service.
            if not self._broker.connection.is_connected:
                raise nats_unavailable("the connection to NATS was lost during the request") \
                    from None
            raise self._unavailable(
                f"the {self._service} did not answer within {self._timeout:g} s") from None
        try:
            reply: Any = self._reply.model_validate_json(msg.body)
        except ValidationError:
            reply = self._reply()
        if reply.rejected is not None:
            status, error, suggestion = self._rejections[reply.rejected.reason]
            raise ApiError(status, error, reply.rejected.detail, suggestion)
        if isinstance(reply.ok, expect):
            return reply.ok
        raise ApiError(502, "bad_gateway",
                       f"the {self._service} sent a reply the gateway cannot read",
                       f"Check that the gateway and {self._service} run the same version.")
