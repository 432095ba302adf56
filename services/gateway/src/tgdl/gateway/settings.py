from __future__ import annotations

from pydantic import Field

from tgdl.contracts.config import CommonSettings


class GatewaySettings(CommonSettings):
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8000, ge=1, le=65535)
    # How long a command may wait for the orchestrator's reply before a 503.
    command_timeout: float = Field(default=10.0, gt=0)
    # How long a start (or an event stream) waits for a just-accepted batch to appear in
    # the read model, and a pause, resume, cancel or new setting for the read model to
    # show it, so that a status query right after the answer agrees with it.
    projection_wait: float = Field(default=2.0, ge=0)
    # A read from PostgreSQL gives up (503) if no connection is had within this, or a
    # query has no answer within it.
    db_timeout: float = Field(default=5.0, gt=0)
    # A status says `stale` once the projector has left a stream's messages unapplied
    # this long (it applies within about a second when healthy).
    stale_after: float = Field(default=5.0, gt=0)

    # Who may call the API (see tgdl.gateway.security). Comma-separated tokens, each as
    # is or `sha256:<hex>` of it; empty: no token needed (tgdl run allows that on loopback).
    api_token: str = Field(default="", repr=False)
    # Tokens limited to chats: `<token>@<chat>[,<chat>...]` entries separated by `;`.
    api_tokens: str = Field(default="", repr=False)
    # How long a signed /media/ link in an answer opens without the token.
    media_link_ttl: float = Field(default=3600.0, gt=0)
    # Names the Host header may carry besides the loopback names and the bind host;
    # `*`: any (behind a proxy that checks it). Comma-separated.
    allowed_hosts: str = ""
    max_body_bytes: int = Field(default=16 * 1024, ge=1024)  # a larger request is a 413
    max_event_streams: int = Field(default=32, ge=1)  # open streams per token (or address)
