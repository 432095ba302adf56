"""`tgdl download | status | cancel | pause | resume | set | priority | batches | messages |
watch | rules | unwatch`: a running tgdl over its HTTP API.

These commands start nothing: they talk to a gateway (`--url`, else TGDL_URL, else the
one a `tgdl run` of the data folder TGDL_HOME serves, else the default local one) and send
TGDL_API_TOKEN as a bearer token when it is set. Every failure is one or two lines (the
API's detail and suggestion), never a traceback; the exit code says how it went.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
import textwrap
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table

from tgdl.contracts.links import looks_like_link
from tgdl.launcher.plan import Home
from tgdl.launcher.progress import (
    LineView,
    LiveView,
    View,
    human_size,
    human_time,
    saved_at,
)

DEFAULT_URL = "http://127.0.0.1:8000"
UNLIMITED_WIDTH = 10_000  # columns of output that is not a terminal
POLL_SECONDS = 1.0  # status polling when the event stream is not available
MAX_RANGE = 10_000  # ids one range may expand to; the server bounds a batch far lower
PRIORITIES = ("high", "normal", "low")

# Exit codes (documented in `tgdl download --help`).
EXIT_OK = 0  # every file completed (or, for other commands, the request succeeded)
EXIT_INCOMPLETE = 1  # the batch ended with files failed or cancelled
EXIT_REFUSED = 2  # bad arguments, or the API refused the request (4xx)
EXIT_UNAVAILABLE = 3  # tgdl could not be reached, or failed (5xx)
EXIT_INTERRUPTED = 130  # Ctrl-C, the batch left running


EXIT_HELP = """\
exit codes:
  0    every file completed
  1    the batch ended with files failed or cancelled
  2    bad arguments, or the API refused the request
  3    tgdl could not be reached, or failed
  130  interrupted with Ctrl-C and the batch left running"""


class Failure(Exception):
    """A request that did not succeed, with the API's words when it gave some."""

    def __init__(self, code: int, error: str, detail: str, suggestion: str | None = None):
        super().__init__(detail)
        self.code, self.error, self.detail, self.suggestion = code, error, detail, suggestion


# --- arguments ---------------------------------------------------------------------------


def message_ids(specs: list[str]) -> list[int | str]:
    """`12 15-20 31` (commas work too) -> ids in order, each once; a Telegram message link
    (https://t.me/chan/1234) stays as it is, in its place, for the gateway to resolve."""
    ids: list[int | str] = []
    for spec in (p for s in specs for p in ([s] if looks_like_link(s) else s.split(","))
                 if p.strip()):
        if looks_like_link(spec):
            ids.append(spec.strip())
            continue
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", spec)
        if not m:
            raise argparse.ArgumentTypeError(
                f"{spec!r} is not a message id, a range like 15-20 or a message link")
        first, last = int(m[1]), int(m[2] or m[1])
        if first < 1 or last < first:
            raise argparse.ArgumentTypeError(f"{spec!r}: ids start at 1 and ranges go up")
        if last - first >= MAX_RANGE:
            raise argparse.ArgumentTypeError(f"{spec!r} holds more than {MAX_RANGE} ids")
        ids.extend(range(first, last + 1))
    if not ids:
        raise argparse.ArgumentTypeError("give at least one message id, a link, or filters "
                                         "(--chat, --type, ...)")
    return list(dict.fromkeys(ids))


_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6,
          "mib": 2**20, "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12,
          "tib": 2**40}


def size(text: str) -> int:
    """`5MB` (10^6), `5MiB` (2^20), `1.5GB`, `800k`, `1234` (bytes)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = m[2].lower() if m else ""
    if not m or unit not in _UNITS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size (e.g. 5MB, 1.5GB, 800KiB, 1234)")
    return int(float(m[1]) * _UNITS[unit])


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value


def add_parsers(commands: Any) -> None:
    """The client commands, added to `tgdl`'s subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=None, metavar="URL",
                        help="the tgdl gateway (default: TGDL_URL, else the `tgdl run` of "
                             f"TGDL_HOME, else {DEFAULT_URL})")
    common.add_argument("--json", action="store_true",
                        help="print the API's JSON answer instead of tables or bars")
    raw = argparse.RawDescriptionHelpFormatter
    filters = argparse.ArgumentParser(add_help=False)
    filters.add_argument("--chat", metavar="CHAT", help="only this chat")
    filters.add_argument("--type", metavar="TYPES",
                         help="media types, comma-separated: photo,video,document,audio,voice")
    filters.add_argument("--min-size", type=size, metavar="SIZE")
    filters.add_argument("--max-size", type=size, metavar="SIZE")
    filters.add_argument("--since", metavar="DATE", help="posted on or after, e.g. 2025-01-01")
    filters.add_argument("--until", metavar="DATE", help="posted on or before")
    filters.add_argument("--search", metavar="TEXT",
                         help="text in the file name or caption (any case)")

    download = commands.add_parser(
        "download", parents=[common, filters], formatter_class=raw,
        epilog=EXIT_HELP + "\n  with --detach: 0 once the batch started, 1 if no file could start",
        help="download messages' media as one batch, with live progress bars",
        description=textwrap.fill(
            "Start a batch on a running tgdl and follow it until it ends (more ids than a "
            "batch holds start as several batches, followed in turn). Filters (--chat, "
            "--type, --min-size, ...) add every catalog message with media that matches "
            "them, as `tgdl messages` lists them. A bar per file in "
            "flight and one for the batch (bytes, speed, time left), rate-limit waits and "
            "failures with their suggestion. Ctrl-C asks whether to cancel the batch or "
            "leave it running. Without a terminal there are lines instead of bars (with --json, "
            "the final status).", 78))
    download.add_argument("ids", nargs="*", metavar="ID",
                          help="message ids, ranges and Telegram message links, e.g. 12 "
                               "15-20 https://t.me/somechannel/1234")
    download.add_argument("--max-concurrent", type=positive, default=3, metavar="N",
                          help="files of this batch downloading at once (1-5, default 3)")
    download.add_argument("--force", action="store_true",
                          help="download again files that are already there")
    download.add_argument("--name-template", metavar="TEMPLATE",
                          help="where this batch's files go under the media root, e.g. "
                               "'{chat}/{kind}s/{date:%%Y-%%m}/{message_id}_{name}' "
                               "(default: the service's TGDL_NAME_TEMPLATE)")
    download.add_argument("--priority", choices=PRIORITIES, default="normal",
                          help="under the global cap, higher goes first across batches "
                               "(default normal; low still gets its turn)")
    download.add_argument("--detach", action="store_true",
                          help="start the batch and return: the batch id alone on stdout "
                               "(with --json, the start answer), what started on stderr; "
                               "`tgdl status ID --watch` follows it")

    status = commands.add_parser(
        "status", parents=[common], formatter_class=raw, epilog=EXIT_HELP,
        help="a batch's status (--watch: follow it with progress bars)")
    status.add_argument("batch", help="the batch id, e.g. batch_1f0c2a9e")
    status.add_argument("--watch", action="store_true",
                        help="follow the batch until it ends, as `tgdl download` does")

    again = commands.add_parser(
        "retry", parents=[common], formatter_class=raw, epilog=EXIT_HELP,
        help="start a batch's failed and cancelled files again, as a new batch",
        description=textwrap.fill(
            "Start the batch's failed and cancelled files again as a new batch, with its "
            "concurrency, priority and naming template (so kept bytes resume where they "
            "are), and follow it as `tgdl download` does. Files without media or deleted "
            "in Telegram are left out: another try cannot mend them.", 78))
    again.add_argument("batch", help="the batch id")
    again.add_argument("--detach", action="store_true",
                       help="start it and return: the new batch id alone on stdout")

    cancel = commands.add_parser("cancel", parents=[common], help="cancel a batch")
    cancel.add_argument("batch", help="the batch id")

    pause = commands.add_parser(
        "pause", parents=[common],
        help="pause a batch: running files stop and keep what they fetched")
    pause.add_argument("batch", help="the batch id")
    resume = commands.add_parser(
        "resume", parents=[common], help="resume a paused batch from the bytes on disk")
    resume.add_argument("batch", help="the batch id")
    settings = commands.add_parser(
        "set", parents=[common],
        help="change a running batch: files downloading at once, priority")
    settings.add_argument("batch", help="the batch id")
    settings.add_argument("--max-concurrent", type=positive, metavar="N",
                          help="1-5; raising it starts more files at once, lowering it "
                               "interrupts none")
    settings.add_argument("--priority", choices=PRIORITIES,
                          help="moves the batch's files that have not started yet")
    priority = commands.add_parser(
        "priority", parents=[common],
        help="change a batch's priority: its files not started yet move with it")
    priority.add_argument("batch", help="the batch id")
    priority.add_argument("priority", choices=PRIORITIES)

    batches = commands.add_parser("batches", parents=[common],
                                  help="recent batches, newest first, with their progress")
    batches.add_argument("--limit", type=positive, default=20, metavar="N")
    batches.add_argument("--offset", type=int, default=0, metavar="N")

    messages = commands.add_parser(
        "messages", parents=[common, filters],
        help="the messages tgdl knows, filtered by the server",
        description="List the catalog's messages with their download state. Filters combine; "
        "sizes take units (5MB = 5,000,000 bytes, 5MiB = 5 x 1024 x 1024); dates are ISO "
        "(2025-01-31, a whole day) or date-times.")
    messages.add_argument("--all", action="store_true",
                          help="messages without media too (default: media only)")
    messages.add_argument("--limit", type=positive, default=50, metavar="N",
                          help="at most N rows (default 50, at most 200)")
    messages.add_argument("--offset", type=int, default=0, metavar="N")
    _add_rule_parsers(commands, common)


def _add_rule_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    watch = commands.add_parser(
        "watch", parents=[common], help="watch a chat: its new matching media download "
        "by themselves", description="Create a watch rule: the catalog service keeps the "
        "chat in sync and starts batches (at most the batch limit each) for new messages "
        "whose media match. Messages already listed start too with --existing.")
    watch.add_argument("chat", help="chat username (e.g. @channel) or numeric id")
    watch.add_argument("--type", metavar="TYPES",
                       help="media types, comma-separated: photo,video,document,audio,voice")
    watch.add_argument("--min-size", type=size, metavar="SIZE", help="e.g. 10MB")
    watch.add_argument("--max-size", type=size, metavar="SIZE")
    watch.add_argument("--caption-matches", metavar="REGEX",
                       help="a regular expression searched in the caption ((?i): any case)")
    watch.add_argument("--name-template", metavar="TEMPLATE",
                       help="how its files are named (as TGDL_NAME_TEMPLATE)")
    watch.add_argument("--max-concurrent", type=positive, default=3, metavar="N",
                       help="files of each batch downloading at once (1-5, default 3)")
    watch.add_argument("--paused", action="store_true", help="create it paused")
    watch.add_argument("--existing", action="store_true",
                       help="also the chat's matching messages already listed (`tgdl sync "
                            "CHAT` lists its history first), in batches of the batch limit")
    rules = commands.add_parser(
        "rules", parents=[common], help="the watch rules; `rules pause|resume RULE_ID`",
        description="List the watch rules with what each started, or pause (nothing "
        "starts) or resume one (what arrived meanwhile starts).")
    rules.add_argument("action", nargs="?", choices=("pause", "resume"))
    rules.add_argument("rule", nargs="?", metavar="RULE_ID")
    unwatch = commands.add_parser("unwatch", parents=[common],
                                  help="delete a watch rule (its batches go on)")
    unwatch.add_argument("rule", metavar="RULE_ID")


# --- HTTP --------------------------------------------------------------------------------


def bearer_token(configured: str | None) -> tuple[str | None, bool]:
    """The token the CLI sends from TGDL_API_TOKEN, which the gateway reads as a list of
    tokens, each plain or `sha256:<hex>`: the first plain one. Also whether the list held
    only digests, which a client cannot send (the gateway keeps no token to compare)."""
    entries = [t.strip() for t in (configured or "").split(",") if t.strip()]
    plain = [t for t in entries if not t.lower().startswith("sha256:")]
    return (plain[0] if plain else None), bool(entries) and not plain


class Api:
    def __init__(self, url: str, token: str | None) -> None:
        self.url = url.rstrip("/")
        token, self.only_digests = bearer_token(token)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        # Reads may wait up to the event stream's keep-alive (15 s) and a bit more.
        self.http = httpx.Client(base_url=self.url, headers=headers,
                                 timeout=httpx.Timeout(20.0, read=45.0))

    def close(self) -> None:
        self.http.close()

    def _unreachable(self, exc: httpx.HTTPError) -> Failure:
        return Failure(EXIT_UNAVAILABLE, "unreachable",
                       f"cannot reach tgdl at {self.url} ({type(exc).__name__}: {exc})",
                       "Start it with `tgdl run`, or point --url (or TGDL_URL) at it.")

    def _failure(self, response: httpx.Response) -> Failure:
        try:
            body = response.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        detail = body.get("detail") or response.reason_phrase or "no detail"
        if not isinstance(detail, str):
            detail = json.dumps(detail)
        code = EXIT_REFUSED if response.status_code < 500 else EXIT_UNAVAILABLE
        suggestion = body.get("suggestion")
        if response.status_code == 401 and self.only_digests:
            suggestion = ("TGDL_API_TOKEN holds only sha256: digests, which the gateway "
                          "checks tokens against; the CLI must send a token itself: put "
                          "one first in TGDL_API_TOKEN as it is (TOKEN,sha256:...).")
        return Failure(code, str(body.get("error") or response.status_code), detail,
                       suggestion)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        if response.status_code >= 400:
            raise self._failure(response)
        try:
            return response.json()
        except ValueError:
            raise Failure(EXIT_UNAVAILABLE, "bad_answer",
                          f"{self.url}{path} did not answer JSON: is it tgdl?",
                          "Check --url (or TGDL_URL).") from None

    def snapshots(self, batch_id: str, sleep: Callable[[float], None] = time.sleep,
                  ) -> Iterator[dict[str, Any]]:
        """The batch's status now and at every change until it finishes: the server-sent
        events, or polling the status when the stream cannot be had or breaks."""
        path = f"/api/media/batch-events/{batch_id}"
        try:
            with self.http.stream("GET", path) as response:
                if response.status_code >= 400:
                    response.read()
                    raise self._failure(response)
                event = "message"
                for line in response.iter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        if event == "error":  # the stream cannot go on: poll instead
                            break
                        snapshot = json.loads(line[5:])
                        yield snapshot
                        if snapshot.get("finished"):
                            return
                    elif not line:
                        event = "message"
        except (httpx.HTTPError, ValueError):
            pass  # a broken stream: the status is still there to poll
        while True:
            snapshot = self.call("GET", f"/api/media/batch-status/{batch_id}")
            yield snapshot
            if snapshot.get("finished"):
                return
            sleep(POLL_SECONDS)


# --- commands ----------------------------------------------------------------------------


def _exit_code(final: dict[str, Any]) -> int:
    return EXIT_OK if final.get("completed") == final.get("total_files") else EXIT_INCOMPLETE


def _print_json(body: Any) -> None:
    sys.stdout.write(json.dumps(body, indent=2) + "\n")
    sys.stdout.flush()


def _view(console: Console, quiet: bool) -> View | None:
    if quiet:
        return None
    return LiveView(console) if console.is_terminal else LineView(console)


def follow(api: Api, console: Console, batch_id: str, as_json: bool) -> int:
    """Show the batch until it ends; Ctrl-C asks whether to cancel it."""
    return follow_all(api, console, [batch_id], as_json)


def follow_all(api: Api, console: Console, batch_ids: list[str], as_json: bool) -> int:
    """Show each batch until it ends, one after the other (they run side by side, so a
    later one may be over when its turn comes); Ctrl-C asks whether to cancel those not
    seen to end. With --json, the final status (a list of them for several batches)."""
    finals: list[dict[str, Any]] = []
    for i, batch_id in enumerate(batch_ids):
        view = _view(console, as_json)
        final: dict[str, Any] = {}
        try:
            with view or contextlib.nullcontext():
                for snapshot in api.snapshots(batch_id):
                    final = snapshot
                    if view:
                        view.update(snapshot)
        except KeyboardInterrupt:
            return interrupted(api, console, batch_ids[i:], as_json)
        if view:
            view.finish(final)
            if any(f.get("status") in ("failed", "cancelled") for f in final.get("files", [])):
                console.print(f"`tgdl retry {batch_id}` starts again those of them another "
                              "try can mend", style="dim", highlight=False, markup=False,
                              soft_wrap=True)
        finals.append(final)
    if as_json:
        _print_json(finals[0] if len(finals) == 1 else finals)
    codes = {_exit_code(final) for final in finals}
    return EXIT_INCOMPLETE if EXIT_INCOMPLETE in codes else EXIT_OK


def _ask(question: str) -> str:
    sys.stderr.write(question)
    sys.stderr.flush()
    try:
        return sys.stdin.readline().strip().lower()
    except (KeyboardInterrupt, OSError):
        return ""


def interrupted(api: Api, console: Console, batch_ids: list[str], as_json: bool) -> int:
    one = len(batch_ids) == 1
    which = f"batch {batch_ids[0]}" if one else \
        f"the {len(batch_ids)} batches {', '.join(batch_ids)}"
    answer = _ask(f"\nCancel {which}? [y/N] (no: {'it keeps' if one else 'they keep'} "
                  "running) ")
    if answer in ("y", "yes"):
        done = [api.call("POST", f"/api/media/batch-cancel/{b}") for b in batch_ids]
        if as_json:
            _print_json(done[0] if len(done) == 1 else done)
        else:
            for cancelled in done:
                console.print(escape(cancelled["message"]))
        return EXIT_INCOMPLETE
    for batch_id in batch_ids:
        console.print(f"Batch {batch_id} keeps running: `tgdl status {batch_id} --watch` "
                      f"follows it, `tgdl cancel {batch_id}` stops it.", highlight=False,
                      markup=False, soft_wrap=True)
    return EXIT_INTERRUPTED


# Links per resolve request: they all travel in its URL, which a few kB keeps well
# inside any server's limit; the gateway's batch limit may be lower still.
LINKS_PER_REQUEST = 50
# What the gateway answers a request it finds too big: more ids or links than a batch
# holds, or a body over TGDL_MAX_BODY_BYTES.
TOO_BIG = ("too_many_files", "too_large", "invalid_request")


def batch_limit(api: Api) -> int | None:
    """The most ids a batch takes on this gateway (its TGDL_MAX_BATCH_IDS)."""
    return api.call("GET", "/api/messages", params={"limit": 1}).get("batch_limit")


def resolve_links(api: Api, said: Console, requested: list[int | str]) -> tuple[list[int], int]:
    """The ids of `requested` with its links resolved by the gateway, in order, each
    once; says why for each link without one, and returns how many those were."""
    links = list(dict.fromkeys(r for r in requested if isinstance(r, str)))
    found: dict[str, list[int]] = {}
    for item in _resolved(api, links):
        if item.get("album"):  # a message of an album: the link names all of it
            found[item["link"]] = item["album"]
            said.print(f"  {item['link']}: an album of {len(item['album'])} messages "
                       "(add ?single for that message alone)", highlight=False,
                       markup=False, soft_wrap=True)
            continue
        if item.get("message_id") is not None:
            found[item["link"]] = [item["message_id"]]
            continue
        said.print(f"  {item['link']} not started: {item['error']}: {item['detail']}",
                   style="red", highlight=False, markup=False, soft_wrap=True)
        said.print(f"      {item['suggestion']}", highlight=False, markup=False,
                   soft_wrap=True)
    ids = [m for r in requested for m in ([r] if isinstance(r, int) else found.get(r, []))]
    return list(dict.fromkeys(ids)), len(set(links) - set(found))


def _resolved(api: Api, links: list[str]) -> list[dict[str, Any]]:
    """The gateway's answer for each link, asked LINKS_PER_REQUEST at a time (or fewer,
    when the gateway's batch limit is lower)."""
    size = LINKS_PER_REQUEST
    items: list[dict[str, Any]] = []
    while len(items) < len(links):
        chunk = links[len(items):len(items) + size]
        try:
            items += api.call("GET", "/api/messages/resolve", params={"link": chunk})["items"]
        except Failure as refused:
            limit = batch_limit(api) if refused.error in TOO_BIG and len(chunk) > 1 else None
            if not limit or limit >= len(chunk):
                raise
            size = limit
    return items


def download(api: Api, console: Console, args: argparse.Namespace) -> int:
    said = said_console(console, args)
    requested = list(args.ids)
    if params := filter_params(args):
        matched = matching_ids(api, params)
        if not matched:
            raise Failure(EXIT_REFUSED, "nothing_matches", "no message with media matches "
                          "the filters", "See what they match with `tgdl messages` and the "
                          "same filters.")
        many = len(matched) != 1
        said.print(f"{len(matched)} message{'s' if many else ''} with media "
                   f"{'match' if many else 'matches'} the filters", highlight=False,
                   markup=False, soft_wrap=True)
        requested += matched
    ids, unresolved = resolve_links(api, said, requested)
    if not ids:
        raise Failure(EXIT_REFUSED, "bad_links", "none of the links names a message in the "
                      "catalog (see above); nothing was started")
    code = _download(api, console, said, args, ids)
    return EXIT_INCOMPLETE if unresolved and code == EXIT_OK else code


def start_batches(api: Api, said: Console, args: argparse.Namespace,
                  ids: list[int]) -> list[dict[str, Any]]:
    """Start `ids` as one batch, or, when they are more than a batch may hold (or than a
    request body may carry), as several of at most the gateway's limit each (in order)."""
    body: dict[str, Any] = {"max_concurrent": args.max_concurrent, "force": args.force,
                            "priority": args.priority}
    if args.name_template is not None:
        body["name_template"] = args.name_template
    started: list[dict[str, Any]] = []
    done, size = 0, len(ids)
    while done < len(ids):
        chunk = ids[done:done + size]
        try:
            started.append(api.call("POST", "/api/media/batch-download",
                                    json={"message_ids": chunk, **body}))
            done += len(chunk)
        except Failure as refused:
            if refused.error in ("too_many_files", "too_large") and len(chunk) > 1:
                # more than a batch holds, or a body too big for the gateway even so
                limit = batch_limit(api) or len(chunk)
                size = limit if limit < len(chunk) else len(chunk) // 2
                continue
            if started:  # what runs already is said before the failure
                said.print(f"Started before this failed: "
                           f"{', '.join(s['batch_id'] for s in started)}", highlight=False,
                           markup=False, soft_wrap=True)
            raise
    return started


def _download(api: Api, console: Console, said: Console, args: argparse.Namespace,
              ids: list[int]) -> int:
    starts = start_batches(api, said, args, ids)
    if len(starts) > 1 and not args.json:
        said.print(f"{len(ids)} messages are more than a batch holds: started as "
                   f"{len(starts)} batches", highlight=False, markup=False, soft_wrap=True)
    return follow_starts(api, console, said, args, starts)


def follow_starts(api: Api, console: Console, said: Console, args: argparse.Namespace,
                  starts: list[dict[str, Any]]) -> int:
    """Say how each start went, then follow the batches that run (or, detached, name
    them and return)."""
    for started in starts:
        if args.json:
            continue
        said.print(f"{started['batch_id']}: {started['message']}", highlight=False,
                   markup=False, soft_wrap=True)
        for f in started["failed_to_start"]:
            said.print(f"  #{f['message_id']} not started: {f['error']}: {f['detail']}",
                       style="red", highlight=False, markup=False)
            if f.get("suggestion"):
                said.print(f"      {f['suggestion']}", highlight=False, markup=False)
        if args.detach:
            sys.stdout.write(started["batch_id"] + "\n")
    running = [s["batch_id"] for s in starts if s["status"] != "failed"]  # the rest: nothing
    if args.json and (args.detach or not running):
        _print_json(starts[0] if len(starts) == 1 else starts)
    if not running:
        return EXIT_INCOMPLETE
    if args.detach:
        return EXIT_OK
    code = follow_all(api, console, running, args.json)
    return EXIT_INCOMPLETE if code == EXIT_OK and len(running) < len(starts) else code


def said_console(console: Console, args: argparse.Namespace) -> Console:
    """Where a start is told: detached, stdout holds the batch id alone
    (b=$(tgdl download --detach ...)); with --json, the answer alone."""
    if args.detach or args.json:
        return Console(stderr=True, highlight=False, soft_wrap=True)
    return console


def retry(api: Api, console: Console, args: argparse.Namespace) -> int:
    started = api.call("POST", f"/api/media/batch-retry/{args.batch}")
    return follow_starts(api, console, said_console(console, args), args, [started])


def whole(header: str, values: Iterable[str]) -> Column:
    """A column of ids (or dates): never cut or wrapped, however narrow the terminal
    (the others give way), since an id is what the next command is given. A cell of
    several lines is as wide as its longest."""
    return Column(header, no_wrap=True, min_width=max(
        [len(header), *(len(line) for value in values for line in value.split("\n"))]))


def listing(*columns: str | Column) -> Table:
    """A table whose cells are never cut short: on a narrow terminal the columns that
    are not `whole` wrap, so every word and path can still be read (and grepped)."""
    table = Table(*columns, box=None, header_style="bold")
    for column in table.columns:
        if not column.no_wrap:
            column.overflow = "fold"
    return table


def status(api: Api, console: Console, args: argparse.Namespace) -> int:
    if args.watch:
        api.call("GET", f"/api/media/batch-status/{args.batch}")  # a clear 404 up front
        return follow(api, console, args.batch, args.json)
    body = api.call("GET", f"/api/media/batch-status/{args.batch}")
    if args.json:
        _print_json(body)
        return EXIT_OK
    console.print(status_heading(body), highlight=False, markup=False)
    table = listing(whole("id", (str(f["message_id"]) for f in body["files"])), "status",
                    "progress", "size", "speed", "time left", "file / reason")
    for f in body["files"]:
        speed = f.get("download_speed")
        reason = saved_at(f) or (
            f"{f['error']}: {f.get('detail') or ''}" if f.get("error") else "")
        if f["status"] == "waiting" and f.get("wait_seconds") is not None:
            reason = f"Telegram rate limit: resumes in {human_time(f['wait_seconds'])}"
        table.add_row(str(f["message_id"]), f["status"], f"{f.get('progress', 0)}%",
                      human_size(f.get("total_size")),
                      f"{human_size(speed)}/s" if speed else "",
                      human_time(f.get("estimated_time_remaining")), escape(reason))
    console.print(table)
    return EXIT_OK


Handler = Callable[[Api, Console, argparse.Namespace], int]


def _steer(method: str, path: str,
           body: Callable[[argparse.Namespace], dict[str, Any]] | None = None) -> Handler:
    """A command that changes a batch and prints the API's sentence about it."""

    def handle(api: Api, console: Console, args: argparse.Namespace) -> int:
        done = api.call(method, path.format(batch=args.batch),
                        **({"json": body(args)} if body else {}))
        if args.json:
            _print_json(done)
        else:
            console.print(escape(done["message"]), highlight=False)
        return EXIT_OK
    return handle


cancel = _steer("POST", "/api/media/batch-cancel/{batch}")
pause = _steer("POST", "/api/media/batch-pause/{batch}")
resume = _steer("POST", "/api/media/batch-resume/{batch}")
set_batch = _steer("PATCH", "/api/media/batch/{batch}",
                   lambda args: {k: v for k, v in (("max_concurrent", args.max_concurrent),
                                                   ("priority", args.priority)) if v})
priority = _steer("PATCH", "/api/media/batch/{batch}",
                  lambda args: {"priority": args.priority})


def batches(api: Api, console: Console, args: argparse.Namespace) -> int:
    page = api.call("GET", "/api/media/batches",
                    params={"limit": min(args.limit, 100), "offset": args.offset})
    if args.json:
        _print_json(page)
        return EXIT_OK
    if not page["items"]:
        console.print("no batches yet: start one with `tgdl download 1 2 3`", markup=False)
        return EXIT_OK
    # Six columns, so that a terminal of 80 keeps every one readable: the id says whether
    # it is a single download, the rule that started a batch goes under it, and a
    # priority other than normal under the status.
    rows = [(b["batch_id"] + (f"\n{b['rule_id']}" if b.get("rule_id") else ""),
             b["created_at"][:16].replace("T", " "),
             b["overall_status"] + ("" if b.get("priority", "normal") == "normal"
                                    else f"\n{b['priority']} priority"),
             f"{b['progress']}%", f"{b['completed']}/{b['total_files']}",
             escape(b["summary"])) for b in page["items"]]
    table = listing(whole("batch", (r[0] for r in rows)), whole("started", (r[1] for r in rows)),
                    whole("status", (r[2] for r in rows)), "progress", "files", "summary")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    shown = len(page["items"])
    console.print(f"{page['offset'] + 1}-{page['offset'] + shown} of {page['total']} batches",
                  style="dim", highlight=False)
    return EXIT_OK


def filter_params(args: argparse.Namespace) -> dict[str, Any]:
    """The message list's query parameters for the filters given (none: {})."""
    given = (("chat", args.chat), ("media_type", args.type), ("min_size", args.min_size),
             ("max_size", args.max_size), ("since", args.since), ("until", args.until),
             ("q", args.search))
    return {name: value for name, value in given if value is not None}


def matching_ids(api: Api, params: dict[str, Any]) -> list[int]:
    """Every message with media the filters match, in catalog order (page by page)."""
    ids: list[int] = []
    while True:
        page = api.call("GET", "/api/messages", params={
            **params, "media_only": True, "limit": 200, "offset": len(ids)})
        ids += [m["message_id"] for m in page["items"]]
        if not page["items"] or len(ids) >= page["total"]:
            return ids


def messages(api: Api, console: Console, args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"limit": min(args.limit, 200), "offset": args.offset,
                              "media_only": not args.all, **filter_params(args)}
    page = api.call("GET", "/api/messages", params=params)
    if args.json:
        _print_json(page)
        return EXIT_OK
    table = listing(whole("id", (str(m["message_id"]) for m in page["items"])), "chat",
                    "type", "size", "date", "state", "file", Column("caption", max_width=24))
    for m in page["items"]:
        table.add_row(str(m["message_id"]), escape(m["chat"]), m["media_type"] or "",
                      human_size(m["size"]), (m.get("date") or "")[:10],
                      m["download_state"].replace("_", " "), escape(m["file_name"] or ""),
                      escape((m.get("caption") or "")[:40]))
    console.print(table)
    shown = len(page["items"])
    where = f"{page['offset'] + 1}-{page['offset'] + shown} of " if shown else "0 of "
    console.print(f"{where}{page['total']} matching messages", style="dim", highlight=False)
    return EXIT_OK


def _rule_line(rule: dict[str, Any]) -> str:
    what = ",".join(rule["media_types"]) or "any media"
    if rule.get("min_size") is not None:
        what += f" >= {human_size(rule['min_size'])}"
    if rule.get("max_size") is not None:
        what += f" <= {human_size(rule['max_size'])}"
    if rule.get("caption_regex"):
        what += f" caption ~ {rule['caption_regex']}"
    return what


def watch(api: Api, console: Console, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"chat": args.chat, "max_concurrent": args.max_concurrent,
                            "enabled": not args.paused, "include_existing": args.existing}
    if args.type:
        body["media_types"] = [t.strip() for t in args.type.split(",") if t.strip()]
    for name, value in (("min_size", args.min_size), ("max_size", args.max_size),
                        ("caption_regex", args.caption_matches),
                        ("name_template", args.name_template)):
        if value is not None:
            body[name] = value
    rule = api.call("POST", "/api/rules", json=body)
    if args.json:
        _print_json(rule)
    else:
        console.print(f"{rule['rule_id']}: watching {rule['chat']} for {_rule_line(rule)}"
                      f"{' (paused)' if not rule['enabled'] else ''}; `tgdl rules` lists "
                      "what it started", highlight=False, markup=False, soft_wrap=True)
    return EXIT_OK


def rules(api: Api, console: Console, args: argparse.Namespace) -> int:
    if args.action:
        if not args.rule:
            raise Failure(EXIT_REFUSED, "bad_arguments", f"`tgdl rules {args.action}` needs "
                          "a RULE_ID (`tgdl rules` lists them)")
        rule = api.call("PATCH", f"/api/rules/{args.rule}",
                        json={"enabled": args.action == "resume"})
        if args.json:
            _print_json(rule)
        else:
            console.print(f"{rule['rule_id']} {args.action}d", highlight=False, markup=False)
        return EXIT_OK
    page = api.call("GET", "/api/rules")
    if args.json:
        _print_json(page)
        return EXIT_OK
    if not page["rules"]:
        console.print("no watch rules: create one with `tgdl watch @chat --type video`",
                      markup=False)
        return EXIT_OK
    table = listing(whole("rule", (r["rule_id"] for r in page["rules"])), "chat", "state",
                    "matches", "batches", "files",
                    whole("last batch", (r.get("last_batch_id") or "" for r in page["rules"])))
    for r in page["rules"]:
        table.add_row(r["rule_id"], escape(r["chat"]), "on" if r["enabled"] else "paused",
                      escape(_rule_line(r)), str(r["batches_started"]),
                      str(r["files_started"]), r.get("last_batch_id") or "")
    console.print(table)
    return EXIT_OK


def unwatch(api: Api, console: Console, args: argparse.Namespace) -> int:
    rule = api.call("DELETE", f"/api/rules/{args.rule}")
    if args.json:
        _print_json(rule)
    else:
        console.print(f"{rule['rule_id']} deleted: {rule['chat']} is no longer watched "
                      "(the batches it started go on)", highlight=False, markup=False)
    return EXIT_OK


HANDLERS: dict[str, Handler] = {
    "download": download, "status": status, "cancel": cancel, "batches": batches,
    "messages": messages, "pause": pause, "resume": resume, "set": set_batch,
    "watch": watch, "rules": rules, "unwatch": unwatch,
    "priority": priority, "retry": retry,
}
COMMANDS = tuple(HANDLERS)  # what `tgdl` hands to this module


def _fail(command: str, failure: Failure) -> int:
    lines = [f"tgdl {command}: {failure.error}: {failure.detail}"]
    if failure.suggestion:
        lines.append(f"  suggestion: {failure.suggestion}")
    sys.stderr.write("\n".join(lines) + "\n")
    return failure.code


def status_heading(body: dict[str, Any]) -> str:
    """A batch status's first line: the batch, its priority, its status and summary (a
    paused or cancelled batch's summary says so itself)."""
    priority = f" ({body['priority']} priority)" if body.get("priority") else ""
    summary = body["summary"]
    said = summary.lower().startswith(f"{body['overall_status']}:")
    status = "" if said else f"{body['overall_status']}: "
    return f"{body['batch_id']}{priority}: {status}{summary}"


def running_gateway(env: dict[str, str], cwd: Path | None = None) -> str | None:
    """The URL a `tgdl run` of the data folder serves on (it may have had to take another
    port than the default), None when none runs there (a note left by one that was
    killed names a process that is gone)."""
    try:
        noted = json.loads(Home.from_env(env, cwd or Path.cwd()).gateway.read_text())
        url, pid = str(noted["url"]), int(noted["pid"])
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return url if url.startswith(("http://", "https://")) and psutil.pid_exists(pid) else None


def console_for(env: dict[str, str]) -> Console:
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in env:
        # A pipe or a file: lines as long as their content, nothing cut to fit 80
        # columns (a status cut to "comp…" would not be found by grep).
        console.width = UNLIMITED_WIDTH
    return console


def main(args: argparse.Namespace, env: dict[str, str] | None = None) -> int:
    env = dict(os.environ if env is None else env)
    # Ctrl-C must reach the question even when started with SIGINT ignored (as a
    # background job of a non-interactive shell is).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.command == "download":
        try:
            args.ids = message_ids(args.ids) if args.ids or not filter_params(args) else []
        except argparse.ArgumentTypeError as exc:
            return _fail("download", Failure(EXIT_REFUSED, "bad_ids", str(exc)))
    api = Api(args.url or env.get("TGDL_URL") or running_gateway(env) or DEFAULT_URL,
              env.get("TGDL_API_TOKEN") or None)
    console = console_for(env)
    try:
        return HANDLERS[args.command](api, console, args)
    except Failure as failure:
        return _fail(args.command, failure)
    except KeyboardInterrupt:  # outside a batch's progress: nothing to decide
        return EXIT_INTERRUPTED
    finally:
        api.close()
