"""The `tgdl` command."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tgdl.launcher import client
from tgdl.launcher.plan import ConfigError

DESCRIPTION = """\
tgdl downloads the media of Telegram messages in batches, with live progress, through
event-sourced services over NATS JetStream and PostgreSQL.

Without TGDL_NATS_URL / TGDL_DATABASE_URL, commands start an embedded nats-server and
PostgreSQL with their data in TGDL_HOME (default ./.tgdl), for as long as they run."""

EPILOG = """\
common settings (environment):
  TGDL_HOME            data folder of the embedded servers (default ./.tgdl)
  TGDL_NATS_URL        use this NATS server instead of the embedded one
  TGDL_DATABASE_URL    use this PostgreSQL instead of the embedded one
  TGDL_HTTP_PORT       port of the web page and API (default 8000)
  TGDL_DOWNLOADERS     downloader replicas started by `tgdl run` (default 2)
  TGDL_API_ID, TGDL_API_HASH
                       a Telegram application's credentials (https://my.telegram.org)
  TGDL_URL             the gateway `download`, `status`, ... talk to (default: the
                       `tgdl run` of TGDL_HOME, else http://127.0.0.1:8000);
                       TGDL_API_TOKEN is sent as a bearer token
The README lists every setting."""


class _Parser(argparse.ArgumentParser):
    """`tgdl download 1 -c 5` is the download command's error, under its usage: argparse
    would report it with tgdl's own usage, which lists none of the command's options."""

    commands: dict[str, argparse.ArgumentParser] = {}

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            command = self.commands.get(getattr(parsed, "command", None) or "", self)
            command.error(f"unrecognized arguments: {' '.join(extra)}")
        return parsed


def _described(commands: Any) -> Any:
    """A command without a description of its own opens its --help with its one-line help
    as a sentence (`tgdl cancel --help` said only its usage)."""
    add = commands.add_parser

    def add_parser(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        if kwargs.get("description") is None and kwargs.get("help"):
            text = kwargs["help"]
            kwargs["description"] = f"{text[0].upper()}{text[1:]}."
        return add(name, **kwargs)

    commands.add_parser = add_parser
    return commands


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tgdl", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = _described(
        parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    commands.add_parser(
        "run", help="run everything in the foreground (Ctrl-C stops it)",
        description="Start the servers (embedded unless given), the gateway, orchestrator, "
        "projector and downloaders, and the simulated Telegram unless an account is "
        "logged in. Prints where to click once the web page answers.",
    )
    commands.add_parser(
        "migrate", help="create or update the database schema and the NATS streams",
    )
    commands.add_parser(
        "rebuild-read-model", help="rebuild the PostgreSQL read model from the NATS streams",
        description="Empty the read model and replay the batch events, download outcomes "
        "and progress into it. Stop `tgdl run` (or the projector service) first: the "
        "read model has one writer at a time.",
    )
    commands.add_parser(
        "login", help="log in to Telegram with TGDL_API_ID / TGDL_API_HASH",
        description="Ask for the phone number and code, and store the session file "
        "(TGDL_SESSION_FILE, default <TGDL_HOME>/telegram.session). Afterwards `tgdl run` "
        "downloads with this account instead of the simulated Telegram.",
    )
    sync = commands.add_parser(
        "sync", help="list a chat's messages into the catalog (needs `tgdl login`)",
        description="A running catalog service (`tgdl run`) syncs the chat, over NATS; "
        "without one, this command syncs it through the logged-in account itself.",
    )
    sync.add_argument("chat", help="chat username (e.g. @channel), invite link or numeric id")
    sync.add_argument("--limit", type=int, default=None, metavar="N",
                      help="only the N newest messages (default: all)")
    prune = commands.add_parser(
        "prune", help="forget finished batches older than TGDL_RETENTION_DAYS (default 30)",
        description="Remove batches that finished longer ago than the retention age from "
        "the batch event log and the read model. Downloaded files stay on disk.",
    )
    prune.add_argument("--older-than", type=float, default=None, metavar="DAYS",
                       help="the age in days (default: TGDL_RETENTION_DAYS)")
    commands.add_parser(
        "seed-demo", help="fill the catalog with the simulated Telegram's messages",
    )
    asyncapi = commands.add_parser(
        "asyncapi", help="the AsyncAPI document of every service's NATS subjects",
        description="Build the AsyncAPI 3.0 document from the services' FastStream brokers "
        "(nothing connects) and print it, write it to docs/asyncapi.yaml, or check that "
        "file is current.",
    )
    mode = asyncapi.add_mutually_exclusive_group()
    mode.add_argument("--write", metavar="FILE", nargs="?", const="docs/asyncapi.yaml",
                      help="write the document (default docs/asyncapi.yaml)")
    mode.add_argument("--check", metavar="FILE", nargs="?", const="docs/asyncapi.yaml",
                      help="exit 1 if FILE is not the current document")
    client.add_parsers(commands)  # download, status, cancel, pause, ... (over HTTP)
    parser.commands = commands.choices
    return parser


async def _dispatch(args: argparse.Namespace) -> int:
    from tgdl.launcher import commands

    env, cwd = os.environ, Path.cwd()
    match args.command:
        case "migrate":
            return await commands.migrate(env, cwd)
        case "rebuild-read-model":
            return await commands.rebuild_read_model(env, cwd)
        case "login":
            return await commands.login(env, cwd)
        case "sync":
            return await commands.sync(env, cwd, args.chat, args.limit)
        case "seed-demo":
            return await commands.seed_demo(env, cwd)
        case "prune":
            return await commands.prune(env, cwd, args.older_than)
    raise AssertionError(f"unhandled command {args.command}")


def _asyncapi(write: str | None, check: str | None) -> int:
    from tgdl.launcher.asyncapi import document, render

    text = render(document())
    if write:
        Path(write).write_text(text)
        print(f"wrote {write}")
    elif check:
        if Path(check).read_text() != text:
            print(f"{check} is out of date: run `make asyncapi`", file=sys.stderr)
            return 1
        print(f"{check} is current")
    else:
        sys.stdout.write(text)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "prune" and args.older_than is not None and args.older_than <= 0:
        print("tgdl prune: --older-than must be a positive number of days", file=sys.stderr)
        return 2
    if args.command == "sync" and args.limit is not None and args.limit < 1:
        print("tgdl sync: --limit must be at least 1", file=sys.stderr)
        return 2
    if args.command in client.COMMANDS:
        return client.main(args)  # reports its own failures and exit codes
    try:
        if args.command == "asyncapi":
            return _asyncapi(args.write, args.check)
        if args.command == "run":
            from tgdl.launcher.console import output_for
            from tgdl.launcher.runner import run

            return asyncio.run(run(os.environ, Path.cwd(), output_for()))
        return asyncio.run(_dispatch(args))
    except KeyboardInterrupt:
        return 130
    except ModuleNotFoundError as exc:
        print(f"tgdl {args.command}: {exc.name} is not installed (run `make run` "
              "or `pip install -r requirements.txt`)", file=sys.stderr)
        return 1
    except (ConfigError, ValidationError) as exc:
        print(f"tgdl {args.command}: invalid setting: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a clear line instead of a traceback; TGDL_DEBUG shows it
        if os.environ.get("TGDL_DEBUG"):
            raise
        print(f"tgdl {args.command}: {type(exc).__name__}: {exc} "
              "(set TGDL_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
