"""Stored message shapes with a schema version, read across releases.

Batch logs and outcomes are kept for 30 days, so a release must read what the previous
ones wrote. Every stored model carries ``v`` (absent on the oldest messages: version 1);
a model whose shape changed lists one upcaster per older version, each turning a raw
body of version n into version n + 1. Reading applies them in order before validation,
so old and new messages come out as the same current model, wherever they are parsed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, model_validator

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


class Versioned(BaseModel):
    # version n -> the function that turns a version-n body into version n + 1
    UPCASTERS: ClassVar[Mapping[int, Upcaster]] = {}

    @model_validator(mode="before")
    @classmethod
    def _upcast(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        current = cls.model_fields["v"].default
        version = data.get("v", 1)
        if not isinstance(version, int) or version >= current:
            return data  # current, or from a newer release: validation says so
        while version < current:
            data = cls.UPCASTERS[version](dict(data))
            version += 1
        return {**data, "v": current}


def nest_failure(body: dict[str, Any]) -> dict[str, Any]:
    """Version 1 kept a failure as flat error/detail/suggestion fields; nest them."""
    error = body.pop("error", None)
    detail = body.pop("detail", None)
    suggestion = body.pop("suggestion", None)
    if error is not None:
        body["failure"] = {"error": error, "detail": detail or "", "suggestion": suggestion or ""}
    return body
