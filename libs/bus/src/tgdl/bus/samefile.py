"""One download per Telegram file: the files bucket says which job is fetching a file
(`FileLocation.file_key`) and, once it is complete, where it is.

A job whose file another job is fetching waits for it and then links to the result; the
fetching job refreshes its record while it runs, so a record nobody refreshes any more
(its downloader died) is taken over. All writes but `complete` are compare-and-set on the
entry's revision, so two jobs never both believe they fetch the same file.
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.errors import BadRequestError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from tgdl.bus.eventlog import WRONG_LAST_SEQUENCE
from tgdl.contracts.jobs import FileRecord
from tgdl.contracts.subjects import Names


class FileRecords:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext, names: Names) -> FileRecords:
        return cls(await js.key_value(names.files_bucket))

    async def get(self, key: str) -> tuple[FileRecord, int] | None:
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        return FileRecord.model_validate_json(entry.value), entry.revision

    async def claim(self, key: str, record: FileRecord, revision: int | None) -> int | None:
        """Write `record` if the entry is still at `revision` (None: absent); returns the
        new revision, or None when another writer came first (look again)."""
        data = record.model_dump_json().encode()
        try:
            if revision is None:
                return await self.kv.create(key, data)
            return await self.kv.update(key, data, last=revision)
        except KeyWrongLastSequenceError:
            return None
        except BadRequestError as exc:  # a stale update, as nats-py sometimes reports it
            if getattr(exc, "err_code", None) != WRONG_LAST_SEQUENCE:
                raise
            return None

    async def complete(self, key: str, record: FileRecord) -> None:
        """The file is stored at `record.relative_path`: later jobs link to it."""
        await self.kv.put(key, record.model_dump_json().encode())

    async def release(self, key: str, job_id: str) -> None:
        """The job stops fetching without a complete file: forget its record, unless
        another job's record replaced it meanwhile."""
        while (current := await self.get(key)) is not None:
            record, revision = current
            if record.job_id != job_id or record.relative_path is not None:
                return
            try:
                await self.kv.delete(key, last=revision)
                return
            except (KeyWrongLastSequenceError, BadRequestError) as exc:
                if getattr(exc, "err_code", WRONG_LAST_SEQUENCE) != WRONG_LAST_SEQUENCE:
                    raise
