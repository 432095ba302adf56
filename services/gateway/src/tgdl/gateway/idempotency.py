"""Safe retries of a start: a client that timed out sends the same request again with the
same `Idempotency-Key` header and gets the first answer instead of a second batch, for a
day (the NATS KV bucket's TTL). The same key with another body is a 422.

The first request claims the key (an atomic create) before it asks the orchestrator and
stores the answer after; a repeat that arrives meanwhile waits for that answer. A start
that fails lets go of the key, so a retry really retries; a claim never answered (its
gateway died mid-request) is taken over by a retry once it is clearly abandoned."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated, TypeVar

from fastapi import Header
from nats.errors import NoRespondersError
from nats.js import JetStreamContext
from nats.js.errors import (
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    ServiceUnavailableError,
)
from nats.js.kv import KeyValue
from pydantic import BaseModel

from tgdl.gateway.errors import NATS_OUTAGES, RETRY_AFTER, ApiError, nats_unavailable
from tgdl.runtime import expected_outage

Answer = TypeVar("Answer", bound=BaseModel)
ABANDONED_AFTER = 30.0  # seconds past the wait after which an unanswered claim is taken over
log = logging.getLogger("tgdl.gateway")

IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", min_length=1, max_length=255,
    description="Any unique string per intended start (a UUID): repeating the request with "
                "it returns the first answer instead of starting again, for a day.")]


class _Record(BaseModel):
    digest: str  # of the request body, as validated
    at: float = 0.0  # when the first request claimed the key (time.time())
    # The answer's JSON once there is one, compressed: a start of many ids with reasons
    # and suggestions repeats itself, and a KV value is capped (topology.MAX_SMALL_BYTES).
    answer: str | None = None

    @staticmethod
    def pack(body: BaseModel) -> str:
        return base64.b64encode(zlib.compress(body.model_dump_json().encode(), 9)).decode()

    def unpack(self, model: type[Answer]) -> Answer:
        assert self.answer is not None
        return model.model_validate_json(zlib.decompress(base64.b64decode(self.answer)))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class Idempotency:
    def __init__(self, js: JetStreamContext, bucket: str, wait: float) -> None:
        self._js = js
        self._bucket = bucket
        self._wait = wait  # how long a repeat waits for the first request's answer
        self._kv: KeyValue | None = None

    async def _store(self) -> KeyValue:
        if self._kv is None:
            try:
                self._kv = await self._js.key_value(self._bucket)
            except BucketNotFoundError:
                raise ApiError(503, "idempotency_unavailable",
                               f"the NATS bucket {self._bucket} does not exist",
                               "Run `tgdl migrate`, or send the request without "
                               "Idempotency-Key.") from None
        return self._kv

    async def once(self, key: str | None, request: BaseModel, model: type[Answer],
                   answer: Callable[[], Awaitable[Answer]]) -> Answer:
        """`answer()`, or the answer given to the first request with this key."""
        if key is None:
            return await answer()
        name = _digest(key)  # any header value, as a valid KV key
        digest = _digest(request.model_dump_json())
        with self._nats_answers():
            kv = await self._store()
            claimed = await self._claim(kv, name, digest, model)
        if not isinstance(claimed, int):
            return claimed  # the first request's answer
        try:
            result = await answer()
        except BaseException:
            with contextlib.suppress(Exception):  # nothing started: a retry really retries
                await kv.delete(name, last=claimed)
            raise
        done = _Record(digest=digest, at=time.time(), answer=_Record.pack(result))
        for attempt in range(20):  # the batch started: keep trying through a NATS blip
            try:
                await kv.update(name, done.model_dump_json().encode(), last=claimed)
                break
            except KeyWrongLastSequenceError:
                break  # taken over meanwhile (we looked dead): that request answers
            except Exception as exc:
                if not expected_outage(exc):
                    log.warning("could not store the answer for an Idempotency-Key: %s", exc)
                    break
                await asyncio.sleep(0.1 * (attempt + 1))
        else:
            log.warning("could not store the answer for an Idempotency-Key (NATS away)")
        return result

    @contextlib.contextmanager
    def _nats_answers(self) -> Iterator[None]:
        """The key's store unreachable (NATS down or reconnecting, JetStream not
        answering) is an outage naming NATS, before anything started."""
        try:
            yield
        except ApiError:
            raise
        except Exception as exc:
            if not (isinstance(exc, NATS_OUTAGES) or expected_outage(exc)
                    or isinstance(exc, NoRespondersError | ServiceUnavailableError)):
                raise
            raise nats_unavailable(
                f"the Idempotency-Key store (NATS bucket {self._bucket}) did not answer: "
                f"{type(exc).__name__}") from None

    async def _claim(self, kv: KeyValue, name: str, digest: str,
                     model: type[Answer]) -> int | Answer:
        """The revision of our claim on the key, or the first request's answer."""
        pending = _Record(digest=digest, at=time.time()).model_dump_json().encode()
        deadline = time.monotonic() + self._wait
        while True:
            try:
                return await kv.create(name, pending)
            except KeyWrongLastSequenceError:
                pass
            try:
                entry = await kv.get(name)
            except KeyNotFoundError:  # the first request failed and let go: claim it
                continue
            record = _Record.model_validate_json(entry.value or b"{}")
            if record.digest != digest:
                raise ApiError(422, "idempotency_key_reused",
                               "this Idempotency-Key was used for a different request",
                               "Use a new key for a new request; repeat a request only "
                               "with the body it was first sent with.")
            if record.answer is not None:
                return record.unpack(model)
            if time.time() - record.at > ABANDONED_AFTER + self._wait:
                # Claimed long ago and never answered: that gateway died mid-request.
                with contextlib.suppress(KeyWrongLastSequenceError):
                    return await kv.update(name, pending, last=entry.revision)
                continue
            if time.monotonic() > deadline:
                raise ApiError(409, "idempotency_key_in_progress",
                               "a request with this Idempotency-Key is still being carried "
                               "out", "Retry in a moment with the same key to get its answer.",
                               headers={"Retry-After": RETRY_AFTER})
            await asyncio.sleep(0.05)
