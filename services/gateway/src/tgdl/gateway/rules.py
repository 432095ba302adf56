"""Watch rules over HTTP: created, paused, resumed and deleted by the catalog service
(request/reply commands), listed from PostgreSQL. A token limited to chats sees and
touches only the rules of its chats (another's is 404, creating one is 403)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from faststream.nats import NatsBroker
from pydantic import BaseModel

from tgdl.contracts.config import chat_key
from tgdl.contracts.rules import (
    RULE_ID_PATTERN,
    CatalogRejectReason,
    CatalogReply,
    CreateRule,
    DeleteRule,
    FetchMessages,
    RuleCreate,
    RulePage,
    RulePatch,
    RuleResult,
    UpdateRule,
    WatchRule,
)
from tgdl.db import rules
from tgdl.gateway.commands import CommandClient
from tgdl.gateway.errors import RETRY_AFTER, ApiError
from tgdl.gateway.services import Services, caller_chats, services
from tgdl.gateway.settings import GatewaySettings

router = APIRouter(prefix="/api/rules", tags=["rules"])

RuleId = Annotated[str, Path(pattern=RULE_ID_PATTERN, description="as returned at creation")]
Svc = Annotated[Services, Depends(services)]

# reason -> (HTTP status, error code in the body, suggestion)
REJECTIONS: dict[CatalogRejectReason, tuple[int, str, str]] = {
    CatalogRejectReason.invalid_command: (
        422, "invalid_request", "Fix the field named in the detail and send the request again."),
    CatalogRejectReason.unknown_chat: (
        422, "unknown_chat",
        "Check the chat's username or id; the account must be able to read it."),
    CatalogRejectReason.rule_not_found: (
        404, "rule_not_found", "Use a rule_id listed by GET /api/rules."),
    CatalogRejectReason.sync_failed: (
        502, "sync_failed", "Check the chat and the account, then retry."),
    CatalogRejectReason.telegram_unavailable: (
        503, "telegram_unavailable",
        "Retry in a moment; check the catalog service's connection to Telegram."),
    CatalogRejectReason.database_unavailable: (
        503, "database_unavailable",
        "Retry in a moment; check that PostgreSQL is running and reachable (GET /healthz)."),
    CatalogRejectReason.internal: (
        502, "catalog_failed", "Retry in a moment; if it persists, check the catalog's logs."),
}


def catalog_unavailable(detail: str) -> ApiError:
    return ApiError(503, "catalog_unavailable", detail,
                    "Start the catalog service (`tgdl run` starts every service) and retry.",
                    headers={"Retry-After": RETRY_AFTER})


def declare(broker: NatsBroker, settings: GatewaySettings) -> CommandClient:
    """The commands the gateway sends the catalog service: the rules', and fetching
    linked messages (documented for AsyncAPI; nothing connects)."""
    names = settings.names
    commands: dict[type[BaseModel], tuple[str, str, str]] = {
        CreateRule: (names.cmd_rule_create, "createRule", "Create a watch rule"),
        UpdateRule: (names.cmd_rule_update, "updateRule", "Pause or resume a watch rule"),
        DeleteRule: (names.cmd_rule_delete, "deleteRule", "Delete a watch rule"),
        FetchMessages: (names.cmd_catalog_fetch, "fetchMessages",
                        "Add linked messages no sync listed yet to the catalog"),
    }
    sends = {
        model: broker.publisher(subject, schema=model, title=title,
                                description=f"{what}: request/reply, answered by the "
                                            "catalog service with a CatalogReply")
        for model, (subject, title, what) in commands.items()
    }
    return CommandClient(broker, sends, settings.command_timeout, service="catalog service",
                         unavailable=catalog_unavailable, reply=CatalogReply,
                         rejections=REJECTIONS)


async def _changed(svc: Services, command: BaseModel) -> WatchRule:
    """The rule as the catalog service left it after `command`."""
    if svc.catalog is None:
        raise catalog_unavailable("this gateway sends no rule commands")
    return (await svc.catalog.call(command, RuleResult)).rule


async def _visible_rule(svc: Services, request: Request, rule_id: str) -> None:
    """Another chat's rule is as if it did not exist for a token limited to chats."""
    chats = await caller_chats(request)
    async with svc.pool.acquire() as conn:
        rule = await rules.get(conn, rule_id)
    if rule is None or (chats is not None and chat_key(rule.chat) not in chats):
        status, error, suggestion = REJECTIONS[CatalogRejectReason.rule_not_found]
        raise ApiError(status, error, f"no watch rule {rule_id!r}", suggestion)


@router.post("", status_code=201, response_model=WatchRule)
async def create_rule(body: RuleCreate, svc: Svc, request: Request) -> WatchRule:
    """Watch a chat: its new media that match start batches by themselves (at most the
    batch limit of files each), as the catalog service finds them."""
    chats = await caller_chats(request)
    if chats is not None and chat_key(body.chat) not in chats:
        raise ApiError(403, "access_denied", f"this API token may not read {body.chat!r}",
                       "Use a chat this token is limited to, or another token.")
    return await _changed(svc, CreateRule(rule=body))


@router.get("", response_model=RulePage)
async def list_rules(svc: Svc, request: Request) -> RulePage:
    """Every watch rule (of the caller's chats), oldest first, with what it started."""
    async with svc.pool.acquire() as conn:
        return RulePage(rules=await rules.listed(conn, await caller_chats(request)))


@router.patch("/{rule_id}", response_model=WatchRule)
async def update_rule(rule_id: RuleId, body: RulePatch, svc: Svc,
                      request: Request) -> WatchRule:
    """Pause (`enabled: false`: nothing starts) or resume a rule; on resume it starts
    what arrived meanwhile."""
    await _visible_rule(svc, request, rule_id)
    return await _changed(svc, UpdateRule(rule_id=rule_id, enabled=body.enabled))


@router.delete("/{rule_id}", response_model=WatchRule)
async def delete_rule(rule_id: RuleId, svc: Svc, request: Request) -> WatchRule:
    """Stop watching; the batches it started go on."""
    await _visible_rule(svc, request, rule_id)
    return await _changed(svc, DeleteRule(rule_id=rule_id))
