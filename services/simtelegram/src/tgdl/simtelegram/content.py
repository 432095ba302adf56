"""The bytes of a simulated message: fixed by a formula, so anyone can check a download.

Bytes ``[i * 2**20, (i + 1) * 2**20)`` of message ``m`` are
``shake_256(f"tgdl-sim:{m}:{i}").digest(2**20)``, cut at the message's size. ``m`` is the
message's file id: its ``message_id``, unless it forwards another message's file (then
that message's). Nothing is ever stored: chunks are computed when needed and only
a few recent ones are cached.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from functools import lru_cache

CHUNK_SIZE = 2**20


@lru_cache(maxsize=16)  # a few streams reading sequentially share one computation each
def chunk(message_id: int, index: int, length: int = CHUNK_SIZE) -> bytes:
    """The first `length` bytes of the 1 MiB chunk `index` of message `message_id`
    (SHAKE's output is the same stream whatever its length: a small file's only chunk
    costs its own size, not a whole MiB)."""
    if index < 0 or not 0 <= length <= CHUNK_SIZE:
        raise ValueError("chunk index must be >= 0 and length within a chunk")
    return hashlib.shake_256(f"tgdl-sim:{message_id}:{index}".encode()).digest(length)


def _check_range(size: int, offset: int, length: int) -> None:
    if size < 0 or offset < 0 or length < 0:
        raise ValueError("size, offset and length must be >= 0")


def iter_range(message_id: int, size: int, offset: int, length: int) -> Iterator[bytes]:
    """The bytes `[offset, offset + length)` (cut at `size`), one slice per chunk touched."""
    _check_range(size, offset, length)
    end = min(size, offset + length)
    position = offset
    while position < end:
        index, start = divmod(position, CHUNK_SIZE)
        stop = min(CHUNK_SIZE, start + (end - position))
        # the chunk as far as the message goes, the same for every reader of it (cached)
        yield chunk(message_id, index, min(CHUNK_SIZE, size - index * CHUNK_SIZE))[start:stop]
        position += stop - start


def read(message_id: int, size: int, offset: int, length: int) -> bytes:
    """The bytes `[offset, offset + length)` of the message, cut at `size`."""
    return b"".join(iter_range(message_id, size, offset, length))


def expected_sha256(message_id: int, size: int) -> str:
    """Hex SHA-256 of the whole message, computed chunk by chunk (bounded memory)."""
    digest = hashlib.sha256()
    for piece in iter_range(message_id, size, 0, size):
        digest.update(piece)
    return digest.hexdigest()
