"""delivery/windows.py: each user's window in Redis, recorded by the webhooks role, read and
closed by the router."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aioredis

from chat4all_workers.autopipeline import AutoPipeline
from chat4all_workers.background import Background
from chat4all_workers.delivery.windows import Windows
from chat4all_workers.errors import WindowClosedError
from chat4all_workers.meta.events import WindowEvent
from chat4all_workers.meta.payloads import OutboundMessage
from harness.stack import StackEndpoints

pytestmark = pytest.mark.stack

ACCOUNT = "1000"
USER = "+5511999990000"
MEMORY_S = 600


@pytest.fixture
async def windows(
    stack: StackEndpoints, background: Background, redis_prefix: str
) -> AsyncIterator[Windows]:
    client = aioredis.from_url(stack.redis_url)
    pipe = AutoPipeline(client, spawn=background.spawn)
    try:
        yield Windows(client, pipe, key=lambda k: redis_prefix + k, memory_s=MEMORY_S)
    finally:
        pipe.close()
        await client.aclose()


def wrote(channel: str, hours_ago: float, user: str = USER) -> WindowEvent:
    return WindowEvent(channel, ACCOUNT, user, datetime.now(UTC) - timedelta(hours=hours_ago))


def text(recipient: str = USER) -> OutboundMessage:
    return OutboundMessage("00000000-0000-4000-8000-000000000001", 7, recipient, "text", text="oi")


async def test_windows_state_is_unknown_until_the_user_writes(windows: Windows) -> None:
    before = await windows.state("whatsapp", ACCOUNT, USER)
    await windows.record([wrote("whatsapp", 2)])
    after = await windows.state("whatsapp", ACCOUNT, USER)

    assert (before.age_s, before.closed) == (None, False)
    assert after.age_s is not None
    assert 2 * 3600 - 5 < after.age_s < 2 * 3600 + 5
    assert not after.closed


async def test_windows_knows_a_whatsapp_user_by_their_digits(windows: Windows) -> None:
    await windows.record([wrote("whatsapp", 1, user="5511999990000")])  # Meta's wa_id

    state = await windows.state("whatsapp", ACCOUNT, "+5511999990000")  # our recipient

    assert state.age_s is not None


async def test_windows_keep_the_newest_user_message(windows: Windows) -> None:
    await windows.record([wrote("whatsapp", 1)])
    await windows.record([wrote("whatsapp", 30)])  # an older webhook arriving late

    state = await windows.state("whatsapp", ACCOUNT, USER)

    assert state.age_s is not None
    assert state.age_s < 2 * 3600


async def test_windows_admit_refuses_a_closed_whatsapp_window_without_a_call(
    windows: Windows,
) -> None:
    await windows.record([wrote("whatsapp", 30)])

    admitted = await windows.admit("whatsapp", ACCOUNT, text(), human_agent=False)

    assert isinstance(admitted, WindowClosedError)
    assert admitted.error_type == "window_closed"
    assert "last wrote 30.0 h ago" in str(admitted)


async def test_windows_admit_tags_an_instagram_human_agent_within_7_days(
    windows: Windows,
) -> None:
    await windows.record([wrote("instagram", 72, user="178")])

    agent = await windows.admit("instagram", ACCOUNT, text("178"), human_agent=True)
    bot = await windows.admit("instagram", ACCOUNT, text("178"), human_agent=False)

    assert isinstance(agent, OutboundMessage)
    assert agent.tag == "HUMAN_AGENT"
    assert isinstance(bot, WindowClosedError)


async def test_windows_close_holds_until_the_user_writes_again(windows: Windows) -> None:
    await windows.close("whatsapp", ACCOUNT, USER, sent_at_s=time.time())
    closed = await windows.admit("whatsapp", ACCOUNT, text(), human_agent=False)
    await windows.record([wrote("whatsapp", 0)])
    reopened = await windows.admit("whatsapp", ACCOUNT, text(), human_agent=False)

    assert isinstance(closed, WindowClosedError)
    assert "has not written since" in str(closed)
    assert isinstance(reopened, OutboundMessage)


async def test_windows_close_leaves_a_window_the_user_opened_after_the_send(
    windows: Windows,
) -> None:
    sent_at = time.time() - 60
    await windows.record([wrote("whatsapp", 0)])  # the user wrote after that send

    await windows.close("whatsapp", ACCOUNT, USER, sent_at_s=sent_at)

    assert not (await windows.state("whatsapp", ACCOUNT, USER)).closed


async def test_windows_templates_go_whatever_the_window(windows: Windows) -> None:
    await windows.close("whatsapp", ACCOUNT, USER, sent_at_s=time.time())
    template = OutboundMessage(
        "00000000-0000-4000-8000-000000000001", 7, USER, "template", template={"name": "x"}
    )

    assert await windows.admit("whatsapp", ACCOUNT, template, human_agent=False) == template
