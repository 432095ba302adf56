"""Triage of a start request: which ids to download, which are already on disk, which are
refused and why.

Pure: the handler gathers the facts (catalog rows, files on disk, leases) and this module
applies the rules, so every case is unit-tested without servers.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from tgdl.contracts.catalog import CatalogEntry
from tgdl.contracts.config import chat_key
from tgdl.contracts.errors import ErrorCode, FileFailure
from tgdl.contracts.events import AlreadyDownloaded
from tgdl.contracts.paths import relative_path


@dataclass(frozen=True)
class Triage:
    to_download: list[CatalogEntry]
    already_downloaded: list[AlreadyDownloaded]
    failed_to_start: list[FileFailure]
    already_downloading: list[int]  # of to_download: another request is downloading it


def triage_request(
    ids: list[int],
    catalog: Mapping[int, CatalogEntry],
    sizes_on_disk: Mapping[int, int],  # message_id -> size of its finished file, if present
    media_root: Path,
    force: bool,
    allowed_chats: Collection[str] | None,  # chat_key()s; None: every chat may be read
    leased: Collection[int],  # ids some job is downloading right now
    name_template: str | None = None,  # the batch's (None: the default layout)
) -> Triage:
    to_download: list[CatalogEntry] = []
    done: list[AlreadyDownloaded] = []
    refused: list[FileFailure] = []
    for m in ids:
        entry = catalog.get(m)
        if entry is None:
            refused.append(FileFailure.of_message(
                m, ErrorCode.message_not_found, f"no message with id {m}"))
        elif allowed_chats is not None and chat_key(entry.chat) not in allowed_chats:
            refused.append(FileFailure.of_message(
                m, ErrorCode.access_denied,
                f"message {m} is in chat {entry.chat!r}, which this service may not read",
            ))
        elif entry.media_kind is None:
            refused.append(FileFailure.of_message(
                m, ErrorCode.no_media, f"message {m} carries no media"))
        elif not force and entry.size is not None and sizes_on_disk.get(m) == entry.size:
            rel = relative_path(entry, name_template)
            done.append(AlreadyDownloaded(
                message_id=m, file_path=str(media_root / rel), relative_path=str(rel),
                size=entry.size,
            ))
        else:
            to_download.append(entry)
    downloading = [e.message_id for e in to_download if e.message_id in leased]
    return Triage(to_download, done, refused, downloading)
