"""The newcomer's commands: `send` (a message written as the platform's API writes it, followed
to READ with --wait) and `message` (all that is known about one message)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

import orjson

from chat4all_workers.cli.output import (
    add_workers,
    connect_postgres,
    count,
    flush_stdout,
    out,
    seconds,
    uuid_arg,
    workers,
)
from chat4all_workers.config import Settings

if TYPE_CHECKING:
    import asyncpg

    from chat4all_workers.ops.follow import FollowResult, StatusEvent
    from chat4all_workers.ops.send import Written


def add(commands: Any) -> None:
    _add_send(commands)
    _add_message(commands)


def _add_send(commands: Any) -> None:
    send = commands.add_parser(
        "send",
        help="write a message as the platform's API does (its row and outbox event, one "
        "transaction) and print its id; --wait follows it to READ",
        description="Write a message as the platform's API does: the messages row and its "
        "message.created outbox event in one transaction. Prints the message id. With --wait, "
        "one line per status (time, channel, status, provider id) until every channel is READ "
        "(exit 0) or FAILED, or the timeout (exit 1, with the reason).",
    )
    content = send.add_mutually_exclusive_group(required=True)
    content.add_argument("--text", metavar="TEXT", help="a text message")
    content.add_argument(
        "--file-id", type=uuid_arg, metavar="UUID", help="a COMPLETED file of the files table"
    )
    send.add_argument("--caption", metavar="TEXT", help="the file's caption (with --file-id)")
    send.add_argument(
        "--channel",
        "--channels",
        dest="channels",
        action="append",
        default=[],
        metavar="NAME",
        help="whatsapp, instagram or all; repeat it or separate with commas (default: all)",
    )
    send.add_argument(
        "--to",
        action="append",
        default=[],
        metavar="CHANNEL=RECIPIENT",
        help="e.g. --to whatsapp=+5511999990000 --to instagram=17841400000000000 (default: "
        "demo recipients, only for a channel whose API is a local mock, as with make run)",
    )
    send.add_argument(
        "--conversation-id",
        **count(1),
        help="the conversation (default: a fresh one)",
    )
    send.add_argument("--sender-id", **count(1), help="the sender")
    send.add_argument(
        "--account",
        metavar="KEY",
        help="the sending account's key (`accounts list`; default: each channel's default)",
    )
    send.add_argument(
        "--wait", action="store_true", help="follow it until READ or FAILED on every channel"
    )
    send.add_argument(
        "--timeout",
        **seconds(0.1, 60.0),
        help="with --wait: give up after S seconds, exit 1 (default 60)",
    )
    add_workers(send, "with --wait: operations ports read for a paused channel")
    send.add_argument("--json", action="store_true", help="one JSON document at the end")


def _add_message(commands: Any) -> None:
    message = commands.add_parser(
        "message",
        help="all that is known about one message: row, status history, dedup markers, DLQ "
        "records, outbox event (read-only); exit 1 if none knows it",
        description="All that is known about one message, read-only: its messages row, its "
        "status history, per channel its dedup marker (sent, failed, leased, in doubt), the "
        "Instagram provider index, its DLQ records and its outbox event. The DLQ is not "
        "scanned: only the partition its conversation's key hashes to is read, from the "
        "message's creation time (less 5 minutes) to the partition's end, at most "
        "--dlq-limit records.",
    )
    message.add_argument("message_id", type=uuid_arg, metavar="ID", help="the message id (UUID)")
    message.add_argument(
        "--dlq-limit",
        **count(1, 10_000),
        help="read at most N records of the DLQ partition (default 10000)",
    )
    add_workers(
        message,
        "operations ports read for the router's state of a channel not sent yet",
        empty_reads_none=True,
    )
    message.add_argument("--json", action="store_true", help="one JSON document")


async def send_message(settings: Settings, args: argparse.Namespace) -> int:
    import asyncpg

    from chat4all_workers.ops import send

    try:
        message = send.compose(
            settings,
            text=args.text,
            file_id=args.file_id,
            caption=args.caption,
            channels=args.channels,
            to=args.to,
            conversation_id=args.conversation_id,
            sender_id=args.sender_id,
            account=args.account,
        )
        conn = await connect_postgres(settings)
        try:
            written = await send.write(conn, message)
            doc = dict(send.describe(written))
            if not args.json:
                out(f"{message.message_id}\n")
            if not args.wait:
                if args.json:
                    out(_json(doc))
                return 0
            result = await _follow(settings, args, conn, written)
        finally:
            await conn.close()
    except send.BadInputError as exc:
        sys.stderr.write(f"chat4all-workers send: {exc}\n")
        return 2
    except asyncpg.PostgresError as exc:  # e.g. a database without the migrations
        sys.stderr.write(f"chat4all-workers send: postgres: {exc}\n")
        return 1
    return _report(args, doc, result)


async def _follow(
    settings: Settings, args: argparse.Namespace, conn: asyncpg.Connection, written: Written
) -> FollowResult:
    """`--wait`: each status as a line (none with --json) until READ or FAILED, or the
    timeout."""
    from chat4all_workers.ops import follow

    message = written.message
    if not args.json:
        to = ", ".join(f"{c} {r}" for c, r in message.recipients.items())
        out(
            f"following it to READ on {to} (conversation {message.conversation_id}; "
            f"up to {args.timeout:g} s)\n"
        )

    def on_status(event: StatusEvent) -> None:
        if not args.json:
            out(follow.status_line(event) + "\n")
            flush_stdout()

    def on_notice(text: str) -> None:
        if not args.json:
            out(f"  {text}\n")
            flush_stdout()

    return await follow.follow(
        settings,
        conn,
        message_id=message.message_id,
        conversation_id=message.conversation_id,
        channels=message.channels,
        event_id=written.event_id,
        timeout_s=args.timeout,
        workers=workers(settings, args.workers),
        on_status=on_status,
        on_notice=on_notice,
        accounts=message.accounts_by_channel(),
    )


def _report(args: argparse.Namespace, doc: dict[str, Any], result: FollowResult) -> int:
    """How the wait ended: exit 0 when READ on every channel, else 1."""
    if args.json:
        out(_json({**doc, **result.as_dict()}))
    elif result.outcome == "read":
        out(f"{result.reason} in {result.elapsed_s:.1f} s\n")
    elif result.outcome == "failed":
        out(f"{result.reason}\n")
    else:
        out(f"timed out after {args.timeout:g} s: {result.reason}\n")
    return 0 if result.outcome == "read" else 1


def _json(doc: dict[str, Any]) -> str:
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n"


async def show_message(settings: Settings, args: argparse.Namespace) -> int:
    from chat4all_workers.ops.story import collect_story
    from chat4all_workers.ops.story_text import render as render_story

    story = await collect_story(
        settings,
        args.message_id,
        dlq_limit=args.dlq_limit,
        workers=workers(settings, args.workers),
    )
    if args.json:
        doc = story.as_dict()
        out(orjson.dumps(doc, option=orjson.OPT_INDENT_2, default=str).decode() + "\n")
    else:
        render_story(story, write=out)
    return 0 if story.found else 1
