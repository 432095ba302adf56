"""The message list (the catalog) with each message's download state, narrowed by the
filters of the query string (all optional, combined with AND)."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from tgdl.contracts.api import LinkResolution, MessagePage, ResolvedLink
from tgdl.contracts.catalog import MediaKind
from tgdl.contracts.config import chat_key
from tgdl.contracts.errors import SUGGESTIONS, ErrorCode
from tgdl.contracts.links import MessageLink, parse_link
from tgdl.contracts.rules import FETCH_MAX, FetchMessages, FetchResult
from tgdl.db import catalog, readmodel
from tgdl.db.catalog import MessageFilter
from tgdl.gateway.errors import ApiError, invalid
from tgdl.gateway.rules import catalog_unavailable
from tgdl.gateway.services import Services, caller_chats, services

router = APIRouter(tags=["messages"])

BIGINT_MAX = 2**63 - 1  # PostgreSQL bigint: larger numbers are refused, not failed on
MEDIA_KINDS = ", ".join(k.value for k in MediaKind)


def media_kinds(value: str | None) -> tuple[str, ...]:
    names = [n.strip().lower() for n in (value or "").split(",") if n.strip()]
    unknown = [n for n in names if n not in MediaKind.__members__]
    if unknown:
        raise invalid(f"media_type: unknown type {', '.join(map(repr, unknown))}; "
                      f"use one or more of {MEDIA_KINDS}, comma-separated")
    return tuple(dict.fromkeys(names))


def moment(name: str, value: str | None, end_of_day: bool) -> datetime | None:
    """An ISO date or date-time (UTC unless it names its zone). A bare date means its
    whole day: `since` from its start, `until` up to its end."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            start = datetime.combine(day, time(), UTC)
            return start + timedelta(days=1) if end_of_day else start
        at = datetime.fromisoformat(value)
        # in UTC, as the database compares it: a zone may carry it out of the calendar
        return (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC)
    except ValueError:
        raise invalid(f"{name}: {value!r} is not a date (2025-01-31) or date-time "
                      "(2025-01-31T18:00:00Z)") from None
    except OverflowError:
        raise invalid(f"{name}: {value!r} is beyond the calendar (years 1 to 9999, "
                      "in UTC)") from None


def complete_files(root: Path, wanted: Sequence[tuple[str, int | None]]) -> list[bool]:
    """For each (path under `root`, size), whether a regular file of that size is there
    (of any size when the size is unknown)."""
    found = []
    for relative, size in wanted:
        try:
            st = (root / relative).stat()
        except (OSError, ValueError):
            found.append(False)
            continue
        found.append(stat.S_ISREG(st.st_mode) and (size is None or st.st_size == size))
    return found


@router.get("/api/messages", response_model=MessagePage)
async def messages(
    svc: Annotated[Services, Depends(services)],
    request: Request,
    offset: Annotated[int, Query(ge=0, le=BIGINT_MAX)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    media_only: bool = False,
    chat: Annotated[str | None, Query(max_length=200, description=(
        "a chat, by any of its names: as listed, @username in any case, or its id"))] = None,
    media_type: Annotated[str | None, Query(
        max_length=200, description=f"comma-separated: {MEDIA_KINDS}")] = None,
    min_size: Annotated[int | None, Query(ge=0, le=BIGINT_MAX, description="bytes")] = None,
    max_size: Annotated[int | None, Query(ge=0, le=BIGINT_MAX, description="bytes")] = None,
    since: Annotated[str | None, Query(max_length=40, description="ISO date or date-time, "
                                       "inclusive")] = None,
    until: Annotated[str | None, Query(max_length=40, description="ISO date (the whole day "
                                       "included) or date-time (exclusive)")] = None,
    q: Annotated[str | None, Query(max_length=200, description="text in the file name or "
                                   "caption, any case")] = None,
) -> MessagePage:
    where = MessageFilter(
        media_only=media_only, chat=chat or None, media_kinds=media_kinds(media_type),
        min_size=min_size, max_size=max_size, since=moment("since", since, False),
        until=moment("until", until, True), text=q or None,
        chats=await caller_chats(request))
    for name, text in (("chat", chat), ("media_type", media_type), ("q", q)):
        if text and "\x00" in text:  # PostgreSQL text cannot hold it
            raise invalid(f"{name}: must not contain a NUL character")
    if min_size is not None and max_size is not None and min_size > max_size:
        raise invalid(f"min_size: {min_size} is larger than max_size {max_size}")
    if where.since and where.until and where.since >= where.until:
        raise invalid(f"since: {since} is not before until {until}")
    async with svc.pool.acquire() as conn:
        page = await readmodel.message_page(
            conn, offset, limit, where=where, name_template=svc.settings.name_template,
            on_disk=lambda wanted: asyncio.to_thread(
                complete_files, svc.settings.media_root, wanted))
    page.batch_limit = svc.settings.max_batch_ids
    for item in page.items:
        if item.download_url:
            item.download_url = svc.tokens.sign(item.download_url)
    return page


LINK_MAX = 500  # characters of one link


@router.get("/api/messages/resolve", response_model=LinkResolution,
            response_model_exclude_none=True)
async def resolve_links(
    svc: Annotated[Services, Depends(services)],
    request: Request,
    link: Annotated[list[str] | None, Query(description=(
        "a message link, e.g. https://t.me/somechannel/1234 or t.me/c/1234567890/55; "
        "repeat for several"))] = None,
) -> LinkResolution:
    """The catalog's message ids of Telegram message links (the ids a start takes), each
    with why it has none: not a message's link, not in the catalog, or in a chat the
    caller may not read."""
    links = link or []
    limit = svc.settings.max_batch_ids
    if not links:
        raise invalid("link: give at least one, e.g. ?link=https://t.me/somechannel/1234")
    if len(links) > limit:
        raise invalid(f"link: {len(links)} given; at most {limit} (a batch's limit)")
    too_long = next((i for i, text in enumerate(links) if len(text) > LINK_MAX), None)
    if too_long is not None:
        raise invalid(f"link.{too_long}: longer than {LINK_MAX} characters")
    parsed: list[MessageLink | ValueError] = []
    for text in links:
        try:
            parsed.append(parse_link(text))
        except ValueError as exc:
            parsed.append(exc)
    readable = await caller_chats(request)
    named = [(p.chat, p.telegram_message_id) for p in parsed if isinstance(p, MessageLink)
             and (readable is None or chat_key(p.chat) in readable)]
    async with svc.pool.acquire() as conn:
        found = await catalog.by_chat_and_id(conn, named)
    missing = [n for n in named if (chat_key(n[0]), n[1]) not in found]
    unfetched = await _fetch_missing(svc, missing)
    async with svc.pool.acquire() as conn:
        if {chat for chat, _ in missing} - unfetched.keys():  # some were fetched: again
            found = await catalog.by_chat_and_id(conn, named)
        albums = await catalog.albums(conn, found.values())
    return LinkResolution(items=[_resolved(text, p, found, albums, readable, unfetched)
                                 for text, p in zip(links, parsed, strict=True)])


async def _fetch_missing(svc: Services, missing: list[tuple[str, int]]
                         ) -> dict[str, ApiError]:
    """Ask the catalog service (which holds the account) for linked messages no sync has
    listed, a chat at a time; returns why, for each chat it could not be asked about."""
    by_chat: dict[str, list[int]] = {}
    for chat, m in missing:
        by_chat.setdefault(chat, []).append(m)
    if not by_chat:
        return {}
    if svc.catalog is None:
        return dict.fromkeys(by_chat, catalog_unavailable("no catalog service to ask"))

    async def fetch(chat: str, ids: list[int]) -> tuple[str, ApiError | None]:
        wanted = sorted(set(ids))
        try:
            for first in range(0, len(wanted), FETCH_MAX):  # a batch may hold more
                await svc.catalog.call(  # type: ignore[union-attr]
                    FetchMessages(chat=chat, telegram_message_ids=wanted[first:first + FETCH_MAX]),
                    FetchResult)
        except ApiError as exc:
            return chat, exc
        return chat, None

    answers = await asyncio.gather(*(fetch(c, ids) for c, ids in by_chat.items()))
    return {chat: why for chat, why in answers if why is not None}


def _resolved(text: str, parsed: MessageLink | ValueError,
              found: dict[tuple[str, int], catalog.CatalogEntry],
              albums: dict[tuple[str, int], list[int]],
              readable: frozenset[str] | None, unfetched: dict[str, ApiError]
              ) -> ResolvedLink:
    if isinstance(parsed, ValueError):
        return ResolvedLink(
            link=text, error="not_a_message_link", detail=f"{text!r}: {parsed}",
            suggestion="Copy the message's link in Telegram (Copy Message Link): "
                       "https://t.me/<chat>/<message> or https://t.me/c/<chat>/<message>.")
    chat, m = parsed.chat, parsed.telegram_message_id
    said = ResolvedLink(link=text, chat=chat, telegram_message_id=m)
    if readable is not None and chat_key(chat) not in readable:
        return said.model_copy(update={
            "error": ErrorCode.access_denied.value,
            "detail": f"chat {chat!r} is not among the chats this service lets you read",
            "suggestion": "Ask for it to be added to TGDL_ALLOWED_CHATS (or to your "
                          "token's chats)."})
    entry = found.get((chat_key(chat), m))
    if entry is None and chat in unfetched:
        why = unfetched[chat].body
        if why.error == "sync_failed":  # Telegram answered: the account cannot read it
            return said.model_copy(update={
                "error": ErrorCode.access_denied.value, "detail": str(why.detail),
                "suggestion": SUGGESTIONS[ErrorCode.access_denied]})
        return said.model_copy(update={  # Telegram could not be asked
            "error": ErrorCode.message_not_found.value,
            "detail": f"message {m} of chat {chat!r} is not in the catalog, and could not "
                      f"be fetched: {why.detail}",
            "suggestion": "Retry once the catalog service reaches Telegram (`tgdl run` "
                          f"starts it), or list the chat with `tgdl sync {chat}`."})
    if entry is None:  # Telegram was asked: no such message with media
        return said.model_copy(update={
            "error": ErrorCode.message_not_found.value,
            "detail": f"chat {chat!r} has no message {m} with media (it may have been "
                      "deleted, or carry only text)",
            "suggestion": "Check the link: open it in Telegram and copy the message's "
                          "link again."})
    album = None  # a message of an album: the link names all of it, unless ?single
    if entry.grouped_id is not None and not parsed.single:
        album = albums.get((entry.chat, entry.grouped_id))
    return said.model_copy(update={"message_id": entry.message_id, "album": album})
