"""Sorting requested ids at the start of a batch: download, already there, or refused.

Pure: the handler gathers the facts (catalog rows, files on disk, leases) and this module
applies the rules, so every case is unit-tested without servers.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from tgdl.contracts.api import StartFailure
from tgdl.contracts.catalog import CatalogEntry
from tgdl.contracts.errors import ErrorCode, Failure
from tgdl.contracts.events import AlreadyDownloaded
from tgdl.contracts.paths import relative_path


@dataclass(frozen=True)
class Classification:
    to_download: list[CatalogEntry]
    already_downloaded: list[AlreadyDownloaded]
    failed_to_start: list[StartFailure]
    already_downloading: list[int]  # of to_download: another request is downloading it


def _refused(message_id: int, code: ErrorCode, detail: str) -> StartFailure:
    f = Failure.of(code, detail)
    return StartFailure(message_id=message_id, error=f.error, detail=f.detail,
                        suggestion=f.suggestion)


def classify(
    ids: list[int],
    catalog: Mapping[int, CatalogEntry],
    sizes_on_disk: Mapping[int, int],  # message_id -> size of its finished file, if present
    media_root: Path,
    force: bool,
    allowed_chats: Collection[str] | None,  # None: the caller may read every chat
    leased: Collection[int],  # ids some job is downloading right now
) -> Classification:
    to_download: list[CatalogEntry] = []
    done: list[AlreadyDownloaded] = []
    refused: list[StartFailure] = []
    for m in ids:
        entry = catalog.get(m)
        if entry is None:
            refused.append(_refused(m, ErrorCode.message_not_found, f"no message with id {m}"))
        elif allowed_chats is not None and entry.chat not in allowed_chats:
            refused.append(_refused(
                m, ErrorCode.access_denied,
                f"message {m} is in chat {entry.chat!r}, which this service may not read",
            ))
        elif entry.media_kind is None:
            refused.append(_refused(m, ErrorCode.no_media, f"message {m} carries no media"))
        elif not force and entry.size is not None and sizes_on_disk.get(m) == entry.size:
            rel = relative_path(entry)
            done.append(AlreadyDownloaded(
                message_id=m, file_path=str(media_root / rel), relative_path=str(rel),
                size=entry.size,
            ))
        else:
            to_download.append(entry)
    downloading = [e.message_id for e in to_download if e.message_id in leased]
    return Classification(to_download, done, refused, downloading)
