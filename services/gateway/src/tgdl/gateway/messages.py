"""The message list (the catalog) with each message's download state."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from tgdl.contracts.api import MessagePage
from tgdl.db import readmodel
from tgdl.gateway.services import Services, services

router = APIRouter(tags=["messages"])


@router.get("/api/messages", response_model=MessagePage)
async def messages(svc: Annotated[Services, Depends(services)],
                   offset: Annotated[int, Query(ge=0)] = 0,
                   limit: Annotated[int, Query(ge=1, le=200)] = 50,
                   media_only: bool = False) -> MessagePage:
    async with svc.pool.acquire() as conn:
        return await readmodel.message_page(conn, offset, limit, media_only)
