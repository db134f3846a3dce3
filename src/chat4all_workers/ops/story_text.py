"""`chat4all-workers message ID` for a person: the story (ops/story.py) in sections, each naming
where it was read (a table, a Redis key pattern, a topic and partition), so an operator can go and
look with the usual tools too. Times are UTC (an incident spans machines and days)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import orjson

from chat4all_workers.ops.dead_letters import DlqSearch
from chat4all_workers.ops.story import Story, iso

Write = Callable[[str], Any]


def render(story: Story, *, write: Write) -> None:
    """The story in sections, each naming where it was read."""
    _render_row(story, write)
    _render_history(story, write)
    _render_markers(story, write)
    _render_index(story, write)
    _render_router(story, write)
    _render_dlq(story.dlq, write)
    _render_outbox(story, write)
    for name, error in story.errors.items():
        write(f"\ncannot read {name}: {error}\n")
    if not story.found:
        write(f"\nmessage {story.message_id}: not found in any source\n")


def _render_row(story: Story, write: Write) -> None:
    row = story.row
    write(f"MESSAGE {story.message_id}\n")
    if row is None:
        write("  no messages row\n")
        return
    payload = row["payload"] if isinstance(row["payload"], dict) else {}
    if payload.get("type") == "text":
        what = f"text {_quote(payload.get('content'))}"
    else:
        what = f"file {payload.get('file_id')}"
        if payload.get("content"):
            what += f" caption {_quote(payload['content'])}"
    channels = ", ".join(map(str, row["channels"])) if isinstance(row["channels"], list) else ""
    write(f"  status        {row['status']}\n")
    write(f"  conversation  {row['conversation_id']}\n")
    write(f"  sender        {row['sender_id'] or '-'}\n")
    write(f"  created       {row['created_at']}  (updated {row['updated_at']})\n")
    write(f"  channels      {channels}\n")
    write(f"  payload       {what}\n")


def _render_history(story: Story, write: Write) -> None:
    write("\nSTATUS HISTORY (message_status_history, in the order recorded)\n")
    for event in story.history:
        line = (
            f"  {iso(event.at)}  {event.channel:<9}  {event.status:<9}  "
            f"{event.provider_message_id or '-'}"
        )
        write(line + (f"  {event.reason}" if event.reason else "") + "\n")
    if not story.history:
        write("  (none)\n")


def _render_markers(story: Story, write: Write) -> None:
    write("\nDEDUP MARKERS (message:dedup:{message_id}:{channel})\n")
    for marker in story.markers:
        when = []
        if marker.written_at:
            when.append(f"written {marker.written_at}")
        if marker.ttl_s is not None:
            when.append(f"expires in {timedelta(seconds=round(marker.ttl_s))}")
        tail = f"  [{', '.join(when)}]" if when else ""
        write(f"  {marker.channel:<9}  {marker.state:<8}  {marker.summary}{tail}\n")
    if not story.markers:
        write("  (not read)\n")


def _render_index(story: Story, write: Write) -> None:
    if not story.provider_index:
        return
    write("\nINSTAGRAM PROVIDER INDEX (message:provider:instagram:{mid})\n")
    for entry in story.provider_index:
        if entry.maps_to == story.message_id:
            target = "this message (its read receipt finds it)"
        elif entry.maps_to:
            target = f"ANOTHER message {entry.maps_to}"
        else:
            target = "not in the index (expired, or never written): a read receipt is ignored"
        write(f"  {entry.provider_message_id} -> {target}\n")


def _render_router(story: Story, write: Write) -> None:
    if not story.router and not story.workers_silent:
        return
    write("\nROUTER NOW (/readyz, for the channels not past the router yet)\n")
    for state in story.router:
        if state.state == "paused":
            held = "" if state.held is None else f" (sends held: {state.held})"
            write(
                f"  {state.channel:<9}  paused since {state.since} at {state.worker}: "
                f"{state.reason}{held}: its send waits for the channel to resume\n"
            )
        else:
            write(f"  {state.channel:<9}  {state.state} at {state.worker}\n")
    for silent in story.workers_silent:
        write(f"  {silent} does not answer\n")


def _render_outbox(story: Story, write: Write) -> None:
    write("\nOUTBOX EVENT (outbox_events)\n")
    for event in story.outbox:
        if event["published"]:
            state = f"published {event['published_at']}"
        else:
            state = f"NOT published (attempts {event['attempts']}, next {event['next_attempt_at']})"
        error = f"  last error: {event['last_error']}" if event["last_error"] else ""
        write(
            f"  {event['id']}  {event['event_type']}  seq {event['seq']}  "
            f"created {event['created_at']}  {state}{error}\n"
        )
    if not story.outbox:
        write("  (none found)\n")


def _render_dlq(search: DlqSearch | None, write: Write) -> None:
    if search is None:
        write("\nDLQ\n  (not read)\n")
        return
    if search.partition is None:
        write(f"\nDLQ ({search.topic})\n  {search.note}\n")
        return
    write(
        f"\nDLQ ({search.topic} partition {search.partition} of {search.partitions}: the one key "
        f"{search.key} hashes to; offsets {search.first_offset}..{search.end_offset} from "
        f"{search.since}; {search.examined} records read"
        + ("" if search.complete else f", INCOMPLETE: {search.note}")
        + ")\n"
    )
    for record in search.records:
        write(
            f"  offset {record.offset}  {record.timestamp}  {record.error_type or '-'}  "
            f"attempts {record.attempts or '-'}  source {record.source or '-'}  "
            f"from {record.original or '-'}\n      {record.reason or '(no reason)'}\n"
        )
    if not search.records:
        write("  (none)\n")


def _quote(text: object) -> str:
    shown = str(text)
    return orjson.dumps(shown if len(shown) <= 80 else shown[:77] + "...").decode()
