"""A scripted Telegram behind Telethon's real client, with no network.

The seam is the lowest one Telethon has: the MTProto sender, whose `send(request)` returns
a future. Everything above it runs for real: `TelegramClient._call` (flood and retry
handling, entity caching), `get_messages`, `iter_messages`, `iter_download` with its
offsets, exported senders for other data centers, `start`/`sign_in` with 2FA. Requests
are serialized and answers parsed back through the TL layer exactly as on the wire, and
errors are built from Telegram's error strings by Telethon's own `rpc_message_to_error`.

The server keeps channels, messages and files, logs every request with the data center it
went to, checks Telegram's rules for `upload.getFile`, and plays faults on a script
(flood waits, expired file references, hangs, dropped connections).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import itertools
import math
import os
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from telethon import TelegramClient, errors, password, utils
from telethon.crypto import AuthKey
from telethon.extensions import BinaryReader
from telethon.network.requeststate import RequestState
from telethon.sessions import StringSession
from telethon.tl import TLObject, functions, types
from telethon.tl.alltlobjects import LAYER

MiB = 1024 * 1024
HOME_DC = 2
DC_ADDRESSES = {
    1: "149.154.175.53", 2: "149.154.167.51", 3: "149.154.175.100",
    4: "149.154.167.91", 5: "91.108.56.130",
}
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
# Telegram's 2048-bit safe prime for SRP (the one clients accept without factoring it).
SRP_PRIME = bytes.fromhex(
    "c71caeb9c6b1c9048e6c522f70f13f73980d40238e3e21c14934d037563d930f"
    "48198a0aa7c14058229493d22530f4dbfa336f6e0ac925139543aed44cce7c37"
    "20fd51f69458705ac68cd4fe6b6b13abdc9746512969328454f18faf8c595f64"
    "2477fe96bb2a941d5bcd1d4ac8cc49880708fa9b378e3c4f3a9060bee67cf9a4"
    "a4a695811051907e162753b56b0f6b410dba74d8a84b2a14b3144e0ef1284754"
    "fd17ed950d5965b4b9dd46582db1178d169c6bc465b0d6ff9ca3928fef5b9ae4"
    "e418fc15e83ebea0f87fa9ff5eed70050ded2849f47bf959d956850ce929851f"
    "0d8115f635b105ee2e4e15d04b2454bf6f4fadf034b10403119cd8e3b92fcc5b"
)
VECTOR = 0x1CB5C415


def content(size: int, seed: int | str = 0) -> bytes:
    """Deterministic, incompressible file bytes."""
    return random.Random(f"tgdl-fake:{seed}").randbytes(size)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class RpcFailure(Exception):
    """Raised by handlers: answered as Telegram's rpc_error (code, message)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message


# --- the server's data -----------------------------------------------------------------------


@dataclass
class StoredFile:
    id: int
    access_hash: int
    data: bytes
    stored_dc: int  # where the bytes live
    announced_dc: int  # what the Document/Photo says (differs: FILE_MIGRATE)
    reference: bytes
    mime_type: str = "application/octet-stream"
    attributes: list[Any] = field(default_factory=list)
    is_photo: bool = False

    PHOTO_TYPE = "y"  # the largest size; the photo also has smaller thumbnails

    def rotate_reference(self) -> None:
        self.reference = os.urandom(16)

    def thumbnails(self) -> dict[str, bytes]:
        return {"m": content(2000, f"{self.id}:m"), "x": content(6000, f"{self.id}:x")}

    def bytes_for(self, location: Any) -> bytes:
        if isinstance(location, types.InputPhotoFileLocation):
            if location.thumb_size == self.PHOTO_TYPE:
                return self.data
            thumb = self.thumbnails().get(location.thumb_size)
            if thumb is None:
                raise RpcFailure(400, "LOCATION_INVALID")
            return thumb
        return self.data

    def tl(self) -> types.Document | types.Photo:
        if self.is_photo:
            thumbs = self.thumbnails()
            sizes: list[Any] = [
                types.PhotoStrippedSize("i", b"\x01\x28\x1e" + bytes(30)),
                types.PhotoSize("m", 320, 240, len(thumbs["m"])),
                # Progressive: byte counts of the JPEG's scans, the last is the whole file.
                types.PhotoSizeProgressive(
                    self.PHOTO_TYPE, 1280, 960,
                    [len(self.data) // 4, len(self.data) // 2, len(self.data)],
                ),
                types.PhotoSize("x", 800, 600, len(thumbs["x"])),  # last, yet not largest
            ]
            return types.Photo(
                id=self.id, access_hash=self.access_hash, file_reference=self.reference,
                date=EPOCH, sizes=sizes, dc_id=self.announced_dc,
            )
        return types.Document(
            id=self.id, access_hash=self.access_hash, file_reference=self.reference,
            date=EPOCH, mime_type=self.mime_type, size=len(self.data),
            dc_id=self.announced_dc, attributes=self.attributes,
        )


@dataclass
class StoredMessage:
    id: int
    date: datetime
    text: str = ""
    file: StoredFile | None = None
    deleted: bool = False
    grouped_id: int | None = None  # an album's: its messages share it


@dataclass
class Channel:
    id: int
    access_hash: int
    username: str | None
    title: str
    forbidden: bool = False  # banned or left a private channel: CHANNEL_PRIVATE
    messages: dict[int, StoredMessage] = field(default_factory=dict)

    @property
    def marked_id(self) -> int:
        return utils.get_peer_id(self.peer)  # -100...: how Telethon writes channel ids

    @property
    def peer(self) -> types.PeerChannel:
        return types.PeerChannel(self.id)

    def tl(self) -> Any:
        if self.forbidden:
            return types.ChannelForbidden(
                id=self.id, access_hash=self.access_hash, title=self.title, broadcast=True,
            )
        return types.Channel(
            id=self.id, title=self.title, photo=types.ChatPhotoEmpty(), date=EPOCH,
            broadcast=True, access_hash=self.access_hash, username=self.username,
        )

    def message_tl(self, message_id: int) -> Any:
        stored = self.messages.get(message_id)
        if stored is None or stored.deleted:
            return types.MessageEmpty(id=message_id, peer_id=self.peer)
        media = None
        if stored.file is not None:
            media = (
                types.MessageMediaPhoto(photo=stored.file.tl()) if stored.file.is_photo
                else types.MessageMediaDocument(document=stored.file.tl())
            )
        return types.Message(
            id=stored.id, peer_id=self.peer, date=stored.date, message=stored.text,
            media=media, post=True, grouped_id=stored.grouped_id,
        )

    def history(self) -> list[int]:
        """Ids of the messages still there, newest first (Telegram's order)."""
        return sorted((m.id for m in self.messages.values() if not m.deleted), reverse=True)


@dataclass(frozen=True)
class Logged:
    dc_id: int
    request: TLObject  # unwrapped from InvokeWithLayer / InitConnection / InvokeWithout...
    sender: int = 0  # which connection (sender) it came over


@dataclass
class Fault:
    """Played once, on the first GetFile request at `offset` (any file unless `file_id`)."""

    offset: int
    action: str  # "error" | "hang" | "drop" | "expire" | "corrupt"
    code: int = 0
    message: str = ""
    file_id: int | None = None


@dataclass
class Account:
    phone: str = "+15550001111"
    code: str = "12345"
    password: str | None = None
    phone_dc: int = HOME_DC
    user: types.User = field(default_factory=lambda: types.User(
        id=777000111, is_self=True, access_hash=4242, first_name="Test", phone="15550001111",
    ))


# --- the server ------------------------------------------------------------------------------


_WRAPPERS = (
    functions.InvokeWithLayerRequest,
    functions.InitConnectionRequest,
    functions.InvokeWithoutUpdatesRequest,
)
# What an unauthorized key may ask (everything else: AUTH_KEY_UNREGISTERED).
_OPEN = (
    functions.help.GetConfigRequest,
    functions.auth.SendCodeRequest,
    functions.auth.SignInRequest,
    functions.auth.CheckPasswordRequest,
    functions.auth.ImportAuthorizationRequest,
    functions.account.GetPasswordRequest,
)


class TelegramServer:
    def __init__(self) -> None:
        self.account = Account()
        self.channels: dict[int, Channel] = {}
        self.files: dict[int, StoredFile] = {}
        self.log: list[Logged] = []
        self.faults: list[Fault] = []
        self.authorized_keys: set[bytes] = set()
        self._ids = iter(range(10_000, 1_000_000))
        self._export_tokens: dict[bytes, int] = {}
        self._srp: dict[int, tuple[int, int]] = {}  # srp_id -> (b, v)
        self._srp_salts = (os.urandom(16), os.urandom(16))
        self.hang_released = asyncio.Event()  # never set by the server itself
        # Telegram's flood waits hold per method until a deadline on this virtual clock.
        self.clock = 0.0
        self.flood_until: dict[type, float] = {}
        self.hash_range = 128 * 1024  # what upload.getFileHashes covers per hash
        self.hashes_per_answer = 8
        self.in_flight = 0  # GetFile requests being answered right now
        self.most_in_flight = 0
        self.on_sender: collections.Counter[int] = collections.Counter()  # GetFile in flight
        self.most_on_a_sender = 0
        self._gate: tuple[int, asyncio.Event] | None = None
        self.senders = itertools.count(1)
        # What Telethon constructs as `MTProtoSender(auth_key, loggers=...)`, bound here.
        self.sender_class = type("BoundFakeSender", (FakeSender,), {"server": self})

    # --- content -------------------------------------------------------------------------

    def add_channel(self, username: str | None = None, *, forbidden: bool = False,
                    title: str = "Test channel") -> Channel:
        channel = Channel(id=next(self._ids), access_hash=random.getrandbits(62),
                          username=username, title=title, forbidden=forbidden)
        self.channels[channel.id] = channel
        return channel

    def _post(self, channel: Channel, text: str, file: StoredFile | None,
              grouped_id: int | None = None) -> int:
        message_id = max(channel.messages, default=0) + 1
        channel.messages[message_id] = StoredMessage(
            id=message_id, date=EPOCH + timedelta(minutes=message_id), text=text, file=file,
            grouped_id=grouped_id,
        )
        return message_id

    def _file(self, data: bytes, *, stored_dc: int, announced_dc: int | None,
              **extra: Any) -> StoredFile:
        stored = StoredFile(
            id=next(self._ids), access_hash=random.getrandbits(62), data=data,
            stored_dc=stored_dc, announced_dc=announced_dc or stored_dc,
            reference=os.urandom(16), **extra,
        )
        self.files[stored.id] = stored
        return stored

    def post_document(
        self, channel: Channel, data: bytes, *, file_name: str | None = None,
        mime_type: str = "application/octet-stream", attributes: list[Any] | None = None,
        stored_dc: int = HOME_DC, announced_dc: int | None = None, text: str = "",
        grouped_id: int | None = None,
    ) -> int:
        attributes = list(attributes or [])
        if file_name:
            attributes.append(types.DocumentAttributeFilename(file_name))
        stored = self._file(data, stored_dc=stored_dc, announced_dc=announced_dc,
                            mime_type=mime_type, attributes=attributes)
        return self._post(channel, text, stored, grouped_id)

    def post_photo(self, channel: Channel, data: bytes, *, stored_dc: int = HOME_DC,
                   text: str = "", grouped_id: int | None = None) -> int:
        stored = self._file(data, stored_dc=stored_dc, announced_dc=None, is_photo=True,
                            mime_type="image/jpeg")
        return self._post(channel, text, stored, grouped_id)

    def post_text(self, channel: Channel, text: str) -> int:
        return self._post(channel, text, None)

    def delete(self, channel: Channel, message_id: int) -> None:
        channel.messages[message_id].deleted = True

    def file_of(self, channel: Channel, message_id: int) -> StoredFile:
        stored = channel.messages[message_id].file
        assert stored is not None
        return stored

    # --- faults and the log --------------------------------------------------------------

    def fail_file_at(self, offset: int, message: str, code: int = 400,
                     file_id: int | None = None) -> None:
        self.faults.append(Fault(offset, "error", code, message, file_id))

    def hang_file_at(self, offset: int) -> None:
        self.faults.append(Fault(offset, "hang"))

    def drop_connection_at(self, offset: int) -> None:
        self.faults.append(Fault(offset, "drop"))

    def expire_reference_at(self, offset: int, file_id: int | None = None) -> None:
        """The file reference expires when a request reaches `offset`: that request and
        every later one carrying the old reference get FILE_REFERENCE_EXPIRED."""
        self.faults.append(Fault(offset, "expire", file_id=file_id))

    def corrupt_file_at(self, offset: int, times: int = 1) -> None:
        """The next `times` answers at `offset` carry a flipped byte (hashes stay right)."""
        self.faults.extend(Fault(offset, "corrupt") for _ in range(times))

    def gather_file_requests(self, count: int) -> None:
        """Hold GetFile answers until `count` requests are in flight at once (once)."""
        self._gate = (count, asyncio.Event())

    def advance(self, seconds: float) -> None:
        """Let time pass for the server (flood waits run out)."""
        self.clock += seconds

    def requests(self, kind: type | None = None) -> list[Logged]:
        return [r for r in self.log if kind is None or isinstance(r.request, kind)]

    def file_requests(self, file: StoredFile | None = None) -> list[Logged]:
        return [
            r for r in self.requests(functions.upload.GetFileRequest)
            if file is None or r.request.location.id == file.id
        ]

    # --- sessions and clients ------------------------------------------------------------

    def logged_in_session(self, dc_id: int = HOME_DC) -> str:
        """A StringSession of an authorized account, as `tgdl login` would have stored."""
        key = os.urandom(256)
        self.authorized_keys.add(key)
        session = StringSession()
        session.set_dc(dc_id, DC_ADDRESSES[dc_id], 443)
        session.auth_key = AuthKey(key)
        return session.save()

    def client_class(self) -> Callable[..., FakeTelegramClient]:
        """Drop-in for `TelegramClient(session, api_id, api_hash, **options)`."""
        def build(session: Any, api_id: int, api_hash: str, **options: Any) -> FakeTelegramClient:
            return FakeTelegramClient(self, session, api_id, api_hash, **options)

        return build

    def client(self, session: str | None = None, **options: Any) -> FakeTelegramClient:
        return FakeTelegramClient(self, StringSession(session), 12345, "0" * 32, **options)

    # --- answering -----------------------------------------------------------------------

    async def handle(self, sender: FakeSender, request: TLObject) -> Any:
        while isinstance(request, _WRAPPERS):
            request = request.query
        assert sender.dc_id is not None
        self.log.append(Logged(sender.dc_id, request, sender.number))
        if not isinstance(request, _OPEN) and sender.auth_key.key not in self.authorized_keys:
            raise RpcFailure(401, "AUTH_KEY_UNREGISTERED")
        handler = _HANDLERS.get(type(request))
        if handler is None:
            raise AssertionError(f"the fake Telegram cannot answer {type(request).__name__}")
        left = self.flood_until.get(type(request), 0.0) - self.clock
        if left > 0:
            raise RpcFailure(420, f"FLOOD_WAIT_{math.ceil(left)}")
        return await handler(self, sender, request)

    def _flood(self, request: TLObject, message: str) -> None:
        wait = re.fullmatch(r"FLOOD_(?:PREMIUM_)?WAIT_(\d+)", message)
        if wait:
            self.flood_until[type(request)] = self.clock + int(wait.group(1))

    def _authorize(self, sender: FakeSender) -> types.auth.Authorization:
        self.authorized_keys.add(sender.auth_key.key)
        return types.auth.Authorization(user=self.account.user)

    def _channel(self, input_channel: Any) -> Channel:
        channel = self.channels.get(getattr(input_channel, "channel_id", None))
        if channel is None or channel.access_hash != input_channel.access_hash:
            raise RpcFailure(400, "CHANNEL_INVALID")
        if channel.forbidden:
            raise RpcFailure(400, "CHANNEL_PRIVATE")
        return channel

    async def _config(self, sender: FakeSender, request: Any) -> types.Config:
        return types.Config(
            date=EPOCH, expires=EPOCH + timedelta(days=1), test_mode=False,
            this_dc=sender.dc_id,
            dc_options=[types.DcOption(id=dc, ip_address=ip, port=443)
                        for dc, ip in DC_ADDRESSES.items()],
            dc_txt_domain_name="", chat_size_max=200, megagroup_size_max=200000,
            forwarded_count_max=100, online_update_period_ms=0, offline_blur_timeout_ms=0,
            offline_idle_timeout_ms=0, online_cloud_timeout_ms=0, notify_cloud_delay_ms=0,
            notify_default_delay_ms=0, push_chat_period_ms=0, push_chat_limit=0,
            edit_time_limit=0, revoke_time_limit=0, revoke_pm_time_limit=0, rating_e_decay=0,
            stickers_recent_limit=0, channels_read_media_period=0, call_receive_timeout_ms=0,
            call_ring_timeout_ms=0, call_connect_timeout_ms=0, call_packet_timeout_ms=0,
            me_url_prefix="https://t.me/", caption_length_max=1024,
            message_length_max=4096, webfile_dc_id=4,
        )

    async def _get_users(self, sender: FakeSender, request: Any) -> list[Any]:
        return [self.account.user if isinstance(u, types.InputUserSelf) else types.UserEmpty(0)
                for u in request.id]

    async def _get_state(self, sender: FakeSender, request: Any) -> types.updates.State:
        return types.updates.State(pts=1, qts=0, date=EPOCH, seq=0, unread_count=0)

    async def _get_difference(self, sender: FakeSender, request: Any) -> Any:
        return types.updates.DifferenceEmpty(date=EPOCH, seq=0)

    async def _resolve_username(self, sender: FakeSender, request: Any) -> Any:
        for channel in self.channels.values():
            if channel.username and channel.username.lower() == request.username.lower():
                return types.contacts.ResolvedPeer(peer=channel.peer, chats=[channel.tl()],
                                                   users=[])
        raise RpcFailure(400, "USERNAME_NOT_OCCUPIED")

    async def _get_channel_messages(self, sender: FakeSender, request: Any) -> Any:
        channel = self._channel(request.channel)
        messages = [channel.message_tl(i.id) for i in request.id]
        return types.messages.ChannelMessages(
            pts=1, count=len(messages), messages=messages, topics=[], chats=[channel.tl()],
            users=[],
        )

    async def _get_channels(self, sender: FakeSender, request: Any) -> Any:
        return types.messages.Chats(chats=[self._channel(c).tl() for c in request.id])

    async def _get_messages(self, sender: FakeSender, request: Any) -> Any:
        # Only channels live here: ids in private chats or groups are all unknown.
        return types.messages.Messages(
            messages=[types.MessageEmpty(id=i.id, peer_id=None) for i in request.id],
            topics=[], chats=[], users=[],
        )

    async def _get_history(self, sender: FakeSender, request: Any) -> Any:
        peer = request.peer
        channel = self._channel(types.InputChannel(peer.channel_id, peer.access_hash))
        ids = channel.history()
        if request.offset_id:
            position = next((n for n, i in enumerate(ids) if i < request.offset_id), len(ids))
        elif request.offset_date and request.offset_date.timestamp() > 0:  # 0: no date
            position = next((n for n, i in enumerate(ids)
                             if channel.messages[i].date < request.offset_date), len(ids))
        else:
            position = 0
        start = position + request.add_offset
        page = ids[max(start, 0):max(start + request.limit, 0)]
        page = [i for i in page if (not request.min_id or i > request.min_id)
                and (not request.max_id or i < request.max_id)]
        return types.messages.ChannelMessages(
            pts=1, count=len(ids), messages=[channel.message_tl(i) for i in page], topics=[],
            chats=[channel.tl()], users=[],
        )

    async def _get_dialogs(self, sender: FakeSender, request: Any) -> Any:
        visible = [c for c in self.channels.values() if not c.forbidden]
        tops = [c.message_tl(c.history()[0]) for c in visible if c.history()]
        return types.messages.Dialogs(
            dialogs=[
                types.Dialog(
                    peer=c.peer, top_message=(c.history() or [0])[0], read_inbox_max_id=0,
                    read_outbox_max_id=0, unread_count=0, unread_mentions_count=0,
                    unread_reactions_count=0, unread_poll_votes_count=0,
                    notify_settings=types.PeerNotifySettings(),
                )
                for c in visible
            ],
            messages=tops, chats=[c.tl() for c in visible], users=[self.account.user],
        )

    async def _get_file(self, sender: FakeSender, request: Any) -> Any:
        offset, limit = request.offset, request.limit
        if offset % 4096 or offset < 0:
            raise RpcFailure(400, "OFFSET_INVALID")
        crosses_mib = offset // MiB != (offset + limit - 1) // MiB
        if limit <= 0 or limit % 4096 or MiB % limit or crosses_mib:
            raise RpcFailure(400, "LIMIT_INVALID")
        location = request.location
        stored = self.files.get(location.id)
        if stored is None or stored.access_hash != location.access_hash:
            raise RpcFailure(400, "FILE_ID_INVALID")
        if sender.dc_id != stored.stored_dc:
            raise RpcFailure(303, f"FILE_MIGRATE_{stored.stored_dc}")
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.on_sender[sender.number] += 1
        self.most_on_a_sender = max(self.most_on_a_sender, self.on_sender[sender.number])
        try:
            if self._gate is not None and not self._gate[1].is_set():
                if self.in_flight >= self._gate[0]:
                    self._gate[1].set()
                await self._gate[1].wait()
            return await self._serve_file(stored, request)
        finally:
            self.in_flight -= 1
            self.on_sender[sender.number] -= 1

    async def _serve_file(self, stored: StoredFile, request: Any) -> Any:
        offset, limit, location = request.offset, request.limit, request.location
        await asyncio.sleep(0)  # let other parts' requests arrive: they overlap as on the wire
        fault = next((f for f in self.faults if f.offset == offset
                      and f.file_id in (None, stored.id)), None)
        corrupt = False
        if fault is not None:
            self.faults.remove(fault)
            corrupt = fault.action == "corrupt"
            if fault.action == "expire":
                stored.rotate_reference()
            elif fault.action == "error":
                self._flood(request, fault.message)
                raise RpcFailure(fault.code, fault.message)
            elif fault.action == "drop":
                raise ConnectionError("connection reset by the fake Telegram")
            elif fault.action == "hang":
                await self.hang_released.wait()
        if location.file_reference != stored.reference:
            raise RpcFailure(400, "FILE_REFERENCE_EXPIRED")
        data = stored.bytes_for(location)[offset:offset + limit]
        if corrupt and data:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        return types.upload.File(type=types.storage.FilePartial(), mtime=0, bytes=data)

    async def _get_file_hashes(self, sender: FakeSender, request: Any) -> list[Any]:
        """SHA-256 of fixed ranges, a few per answer from the range holding `offset`."""
        location = request.location
        stored = self.files.get(location.id)
        if stored is None or stored.access_hash != location.access_hash or stored.is_photo:
            raise RpcFailure(400, "LOCATION_INVALID")
        if sender.dc_id != stored.stored_dc:
            raise RpcFailure(303, f"FILE_MIGRATE_{stored.stored_dc}")
        if location.file_reference != stored.reference:
            raise RpcFailure(400, "FILE_REFERENCE_EXPIRED")
        size, step = len(stored.data), self.hash_range
        start = request.offset - request.offset % step
        return [
            types.FileHash(offset=o, limit=step,
                           hash=hashlib.sha256(stored.data[o:o + step]).digest())
            for o in range(start, min(size, start + step * self.hashes_per_answer), step)
        ]

    async def _export_authorization(self, sender: FakeSender, request: Any) -> Any:
        token = os.urandom(32)
        self._export_tokens[token] = request.dc_id
        return types.auth.ExportedAuthorization(id=self.account.user.id, bytes=token)

    async def _import_authorization(self, sender: FakeSender, request: Any) -> Any:
        if self._export_tokens.pop(request.bytes, None) != sender.dc_id:
            raise RpcFailure(400, "AUTH_BYTES_INVALID")
        return self._authorize(sender)

    async def _send_code(self, sender: FakeSender, request: Any) -> Any:
        if request.phone_number.lstrip("+") != self.account.phone.lstrip("+"):
            raise RpcFailure(400, "PHONE_NUMBER_INVALID")
        if sender.dc_id != self.account.phone_dc:
            raise RpcFailure(303, f"PHONE_MIGRATE_{self.account.phone_dc}")
        return types.auth.SentCode(type=types.auth.SentCodeTypeApp(length=5),
                                   phone_code_hash="c0de-hash")

    async def _sign_in(self, sender: FakeSender, request: Any) -> Any:
        if request.phone_code_hash != "c0de-hash":
            raise RpcFailure(400, "PHONE_CODE_HASH_EMPTY")
        if request.phone_code != self.account.code:
            raise RpcFailure(400, "PHONE_CODE_INVALID")
        if self.account.password is not None:
            raise RpcFailure(401, "SESSION_PASSWORD_NEEDED")
        return self._authorize(sender)

    def _algo(self) -> Any:
        salt1, salt2 = self._srp_salts
        return types.PasswordKdfAlgoSHA256SHA256PBKDF2HMACSHA512iter100000SHA256ModPow(
            salt1=salt1, salt2=salt2, g=3, p=SRP_PRIME)

    async def _get_password(self, sender: FakeSender, request: Any) -> Any:
        """SRP as Telegram does it: B = k·v + g^b, v = g^x (x from the password)."""
        assert self.account.password is not None
        algo = self._algo()
        p, g = int.from_bytes(SRP_PRIME, "big"), algo.g
        x = int.from_bytes(password.compute_hash(algo, self.account.password), "big")
        v = pow(g, x, p)
        k = int.from_bytes(password.sha256(SRP_PRIME, password.big_num_for_hash(g)), "big")
        while True:
            b = int.from_bytes(os.urandom(256), "big")
            big_b = (k * v + pow(g, b, p)) % p
            if password.is_good_mod_exp_first(big_b, p):
                break
        srp_id = random.getrandbits(62)
        self._srp[srp_id] = (b, v)
        return types.account.Password(
            new_algo=types.PasswordKdfAlgoUnknown(),
            new_secure_algo=types.SecurePasswordKdfAlgoUnknown(),
            secure_random=os.urandom(32), has_password=True, current_algo=algo,
            srp_B=big_b.to_bytes(256, "big"), srp_id=srp_id,
        )

    async def _check_password(self, sender: FakeSender, request: Any) -> Any:
        srp = request.password
        state = self._srp.pop(srp.srp_id, None)
        if state is None:
            raise RpcFailure(400, "SRP_ID_INVALID")
        b, v = state
        algo = self._algo()
        p, g = int.from_bytes(SRP_PRIME, "big"), algo.g
        k = int.from_bytes(password.sha256(SRP_PRIME, password.big_num_for_hash(g)), "big")
        big_b = (k * v + pow(g, b, p)) % p
        big_a = int.from_bytes(srp.A, "big")
        u = int.from_bytes(password.sha256(srp.A, big_b.to_bytes(256, "big")), "big")
        s = pow(big_a * pow(v, u, p) % p, b, p)
        key = password.sha256(password.big_num_for_hash(s))
        expected = password.sha256(
            password.xor(password.sha256(SRP_PRIME), password.sha256(password.big_num_for_hash(g))),
            password.sha256(algo.salt1), password.sha256(algo.salt2),
            srp.A, big_b.to_bytes(256, "big"), key,
        )
        if expected != srp.M1:
            raise RpcFailure(400, "PASSWORD_HASH_INVALID")
        return self._authorize(sender)


_HANDLERS: dict[type, Callable[..., Any]] = {
    functions.help.GetConfigRequest: TelegramServer._config,
    functions.users.GetUsersRequest: TelegramServer._get_users,
    functions.updates.GetStateRequest: TelegramServer._get_state,
    functions.updates.GetDifferenceRequest: TelegramServer._get_difference,
    functions.contacts.ResolveUsernameRequest: TelegramServer._resolve_username,
    functions.channels.GetMessagesRequest: TelegramServer._get_channel_messages,
    functions.channels.GetChannelsRequest: TelegramServer._get_channels,
    functions.messages.GetMessagesRequest: TelegramServer._get_messages,
    functions.messages.GetHistoryRequest: TelegramServer._get_history,
    functions.messages.GetDialogsRequest: TelegramServer._get_dialogs,
    functions.upload.GetFileRequest: TelegramServer._get_file,
    functions.upload.GetFileHashesRequest: TelegramServer._get_file_hashes,
    functions.auth.ExportAuthorizationRequest: TelegramServer._export_authorization,
    functions.auth.ImportAuthorizationRequest: TelegramServer._import_authorization,
    functions.auth.SendCodeRequest: TelegramServer._send_code,
    functions.auth.SignInRequest: TelegramServer._sign_in,
    functions.account.GetPasswordRequest: TelegramServer._get_password,
    functions.auth.CheckPasswordRequest: TelegramServer._check_password,
}


# --- the seam: Telethon's MTProto sender -----------------------------------------------------


def _wire(result: Any) -> bytes:
    if isinstance(result, list):
        return (VECTOR.to_bytes(4, "little") + len(result).to_bytes(4, "little")
                + b"".join(bytes(item) for item in result))
    return bytes(result)


class FakeSender:
    """Stands in for `MTProtoSender`: same public surface, answers from the server (the
    class is bound to one: `TelegramServer.sender_class`)."""

    server: TelegramServer

    def __init__(self, auth_key: AuthKey | None, **options: Any) -> None:
        self.number = next(self.server.senders)
        self.auth_key = auth_key or AuthKey(None)
        self.dc_id: int | None = None
        self._connected = False
        self._disconnected: asyncio.Future | None = None
        self._answers: set[asyncio.Task] = set()

    async def connect(self, connection: Any) -> bool:
        if self._connected:
            return False
        self.dc_id = connection._dc_id  # the data center the connection was made for
        if not self.auth_key:
            self.auth_key.key = os.urandom(256)  # the key exchange a real sender would do
        self._connected = True
        self._disconnected = asyncio.get_running_loop().create_future()
        return True

    def is_connected(self) -> bool:
        return self._connected

    def _transport_connected(self) -> bool:
        return self._connected

    def _keepalive_ping(self, ping_id: int) -> None:
        pass

    @property
    def disconnected(self) -> asyncio.Future:
        assert self._disconnected is not None
        return asyncio.shield(self._disconnected)

    async def disconnect(self) -> None:
        self._connected = False
        for task in list(self._answers):
            task.cancel()
        if self._disconnected is not None and not self._disconnected.done():
            self._disconnected.set_result(None)

    def send(self, request: Any, ordered: bool = False) -> Any:
        if not self._connected:
            raise ConnectionError("Cannot send requests while disconnected")
        if isinstance(request, list):
            return [self.send(r) for r in request]
        state = RequestState(request)  # serializes the request, as on the wire
        task = asyncio.get_running_loop().create_task(self._answer(state))
        self._answers.add(task)
        task.add_done_callback(self._answers.discard)
        return state.future

    async def _answer(self, state: RequestState) -> None:
        future = state.future
        try:
            # What the server sees is what went over the wire (Telethon reuses and mutates
            # request objects, e.g. the offset of a download).
            received = BinaryReader(state.data).tgread_object()
            result = await self.server.handle(self, received)
            parsed = state.request.read_result(BinaryReader(_wire(result)))
        except RpcFailure as failure:
            error = errors.rpc_message_to_error(
                types.RpcError(error_code=failure.code, error_message=failure.message),
                state.request,
            )
            if not future.done():
                future.set_exception(error)
        except asyncio.CancelledError:
            if not future.done():
                future.set_exception(ConnectionError("disconnected with the request pending"))
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
        else:
            if not future.done():
                future.set_result(parsed)


class FakeTelegramClient(TelegramClient):
    """Telethon's real client; only the socket-owning sender is replaced."""

    def __init__(self, server: TelegramServer, session: Any, api_id: int, api_hash: str,
                 **options: Any) -> None:
        super().__init__(session, api_id, api_hash, **options)
        self.server = server
        self._sender = server.sender_class(self.session.auth_key)

    async def _create_exported_sender(self, dc_id: int) -> FakeSender:
        # Telethon's own steps (telegrambaseclient.py), with a fake sender instead of
        # MTProtoSender: connect to the DC, export the authorization, import it there.
        dc = await self._get_dc(dc_id)
        sender = self.server.sender_class(None)
        await sender.connect(self._connection(
            dc.ip_address, dc.port, dc.id, loggers=self._log, proxy=self._proxy,
            local_addr=self._local_addr,
        ))
        auth = await self(functions.auth.ExportAuthorizationRequest(dc_id))
        self._init_request.query = functions.auth.ImportAuthorizationRequest(
            id=auth.id, bytes=auth.bytes)
        await sender.send(functions.InvokeWithLayerRequest(LAYER, self._init_request))
        return sender
