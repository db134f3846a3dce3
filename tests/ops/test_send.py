"""`chat4all-workers send`: a message written as the platform's API writes it, then followed."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest

from chat4all_workers.app import App
from chat4all_workers.config import Settings
from chat4all_workers.formats.message import parse_message
from chat4all_workers.ops.send import BadInputError, compose
from chat4all_workers.roles import load_settings
from harness.deployment import Deployment
from tests.ops.cli_support import run_cli

FAST: dict[str, dict[str, Any]] = {
    "mocks": {"delivered_after_ms": 20.0, "read_after_ms": 50.0},
    "outbox": {"poll_interval_ms": 100},
    "router": {"retry_base_s": 0.05, "retry_cap_s": 0.2, "pause_probe_base_s": 0.2},
}
PIPELINE = ["outbox", "router", "status_updater", "webhooks", "whatsapp_mock", "instagram_mock"]


def settings_with(**sections: dict[str, Any]) -> Settings:
    doc: dict[str, dict[str, Any]] = {
        "whatsapp": {"base_url": "https://graph.facebook.com"},
        "instagram": {"base_url": "http://127.0.0.1:8102"},
    }
    for name, values in sections.items():
        doc.setdefault(name, {}).update(values)
    return load_settings({}, doc)


def composed(settings: Settings, **overrides: Any) -> None:
    arguments: dict[str, Any] = {
        "text": "hello",
        "file_id": None,
        "caption": None,
        "channels": ["all"],
        "to": ["whatsapp=+5511988887777"],
        "conversation_id": None,
        "sender_id": None,
    }
    compose(settings, **{**arguments, **overrides})


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"channels": ["telegram"]}, "unknown channel 'telegram' (known: whatsapp, instagram"),
        ({"to": []}, "no recipient for whatsapp: --to whatsapp=RECIPIENT"),
        ({"to": ["whatsapp"]}, "--to 'whatsapp': expected CHANNEL=RECIPIENT"),
        ({"text": ""}, "--text is empty"),
        ({"caption": "look"}, "--caption goes with --file-id"),
        ({"conversation_id": 2**63}, "conversation_id: 9223372036854775808 is outside"),
    ],
)
def test_send_refuses_what_the_router_would_refuse(overrides: dict[str, Any], problem: str) -> None:
    with pytest.raises(BadInputError) as error:
        composed(settings_with(), **overrides)

    assert problem in str(error.value)


def test_send_gives_demo_recipients_only_to_a_channel_whose_api_is_a_local_mock() -> None:
    settings = settings_with()

    message = compose(
        settings,
        text="hi",
        file_id=None,
        caption=None,
        channels=["whatsapp,instagram"],
        to=["whatsapp=+5511988887777"],
        conversation_id=42,
        sender_id=7,
    )

    assert message.recipients == {"whatsapp": "+5511988887777", "instagram": "17841400000000000"}
    parsed = parse_message(orjson.dumps(message.record_value()), ("whatsapp", "instagram"))
    assert (parsed.conversation_id, parsed.sender_id, parsed.content) == (42, 7, "hi")
    assert parsed.channels == ("whatsapp", "instagram")


@contextlib.asynccontextmanager
async def connected(deployment: Deployment) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(deployment.database_url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.mark.stack
async def test_send_writes_the_row_and_its_outbox_event_in_one_transaction(
    deployment: Deployment,
) -> None:
    args = ["send", "--text", "hello", "--channel", "whatsapp", "--to", "whatsapp=+5511988887777"]

    result = await asyncio.to_thread(
        run_cli, [*args, "--conversation-id", "42"], deployment.environ()
    )

    assert result.code == 0, result.err
    (message_id,) = result.lines
    async with connected(deployment) as conn:
        row = await conn.fetchrow(
            """SELECT conversation_id, status, channels::text, xmin::text
               FROM messages WHERE id = $1""",
            uuid.UUID(message_id),
        )
        event = await conn.fetchrow(
            """SELECT aggregate_type, aggregate_id, event_type, topic, payload::text,
                      xmin::text FROM outbox_events"""
        )
    assert (row["conversation_id"], row["status"]) == (42, "ACCEPTED")
    assert orjson.loads(row["channels"]) == ["whatsapp"]
    assert event["xmin"] == row["xmin"]  # written by one and the same transaction
    assert (event["aggregate_type"], event["aggregate_id"]) == ("conversation", "42")
    assert (event["event_type"], event["topic"]) == ("message.created", None)
    value = parse_message(event["payload"].encode(), ("whatsapp", "instagram"))
    assert (value.message_id, value.content) == (message_id, "hello")
    assert value.recipients == {"whatsapp": "+5511988887777"}


@pytest.mark.stack
async def test_send_refuses_a_file_that_does_not_exist_and_writes_nothing(
    deployment: Deployment,
) -> None:
    missing = uuid.uuid4()

    result = await asyncio.to_thread(
        run_cli, ["send", "--file-id", str(missing), "--caption", "x"], deployment.environ()
    )

    assert result.code == 2
    assert result.err == f"chat4all-workers send: no file {missing} (table files)\n"
    async with connected(deployment) as conn:
        written = await conn.fetchval(
            "SELECT (SELECT count(*) FROM messages) + (SELECT count(*) FROM outbox_events)"
        )
    assert written == 0


@contextlib.asynccontextmanager
async def pipeline(settings: Settings, roles: list[str]) -> AsyncIterator[App]:
    """The roles in this process, their /readyz on the deployment's operations port."""
    async with App(settings, roles=roles) as app:
        await app.wait_ready(30)
        yield app


@pytest.mark.stack
async def test_send_wait_follows_the_message_to_read_on_both_channels(
    deployment: Deployment,
) -> None:
    async with pipeline(deployment.settings(**FAST), PIPELINE):
        result = await asyncio.to_thread(
            run_cli, ["send", "--wait", "--timeout", "30", "--text", "hello"], deployment.environ()
        )

    assert result.code == 0, result.out + result.err
    message_id, following, *lines, verdict = result.lines
    uuid.UUID(message_id)
    statuses = [line for line in lines if not line.startswith("  ")]  # notices are indented
    assert following.startswith("following it to READ on whatsapp +5511999990000, instagram ")
    seen = {(line.split()[1], line.split()[2]): line.split()[3] for line in statuses}
    assert seen[("whatsapp", "READ")].startswith("wamid.")
    assert seen[("instagram", "READ")].startswith("mid.")
    assert {("whatsapp", "SENT"), ("instagram", "SENT")} <= set(seen)
    assert verdict.startswith("READ on every channel (whatsapp, instagram) in ")


@pytest.mark.stack
async def test_send_wait_reports_a_paused_channel_and_exits_1_at_its_timeout(
    deployment: Deployment,
) -> None:
    settings = deployment.settings(**{**FAST, "mocks": {"token_expired": True}})
    args = ["send", "--wait", "--timeout", "3", "--text", "hello", "--channel", "whatsapp"]
    async with pipeline(settings, ["outbox", "router", "status_updater", "whatsapp_mock"]):
        result = await asyncio.to_thread(run_cli, args, deployment.environ())

    assert result.code == 1
    _, _, notice, verdict = result.lines
    assert notice.startswith("  whatsapp: paused at the router: HTTP 401 (190/463): ")
    assert verdict.startswith(
        "timed out after 3 s: whatsapp: no status yet, paused at the router (HTTP 401 (190/463)"
    )
