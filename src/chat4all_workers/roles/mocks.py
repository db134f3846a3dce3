"""`whatsapp_mock` and `instagram_mock`: the channel simulators, for development and tests.

Each serves the provider's API on loopback (`mocks.host`, `mocks.whatsapp_port` /
`mocks.instagram_port`) and reports DELIVERED and READ to `message_status_updates`, as the real
webhooks would. They are `temporary` (never restarted) and not part of `--roles all`.
"""

from __future__ import annotations

from typing import Any

import orjson

from chat4all_workers.channels.mock_api import MockChannel
from chat4all_workers.kafka.producer import OutgoingRecord
from chat4all_workers.resources import Need
from chat4all_workers.roles.base import Restart, RoleContext, RoleSpec


async def _serve(ctx: RoleContext, channel: str, port: int) -> None:
    producer = ctx.resources.kafka()
    topic = ctx.settings.topics.message_status_updates

    async def emit(update: dict[str, Any]) -> None:
        key = f"conversation:{update['conversation_id']}".encode()
        await producer.send(OutgoingRecord(topic, orjson.dumps(update), key), fallback=True)

    mock = MockChannel(channel, ctx.settings.mocks, emit)
    async with mock.serving(ctx.settings.mocks.host, port):
        ctx.mark_ready()
        await ctx.stopping.wait()


async def run_whatsapp(ctx: RoleContext) -> None:
    await _serve(ctx, "whatsapp", ctx.settings.mocks.whatsapp_port)


async def run_instagram(ctx: RoleContext) -> None:
    await _serve(ctx, "instagram", ctx.settings.mocks.instagram_port)


WHATSAPP = RoleSpec(
    name="whatsapp_mock",
    needs=frozenset({Need.KAFKA, Need.REDIS}),
    run=run_whatsapp,
    restart=Restart.TEMPORARY,
)

INSTAGRAM = RoleSpec(
    name="instagram_mock",
    needs=frozenset({Need.KAFKA, Need.REDIS}),
    run=run_instagram,
    restart=Restart.TEMPORARY,
)
