"""The router's delivery parts (delivery/), assembled as roles/router.py assembles them, for one
channel: over real Redis (the test's key prefix) and Kafka (a status topic of the test's own),
with the real channel adapter calling a scripted provider on loopback HTTP.

Nothing sleeps: the parts' backoff and throttle waits go to `Waits`, which records each delay and
lets a test act while the part "waits" (the provider's word arrives, another worker takes the
lease)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pytest
import redis.asyncio as aioredis

from chat4all_workers.accounts.model import DEFAULT_KEY, Account, default_app_id
from chat4all_workers.channels.base import ChannelAdapter
from chat4all_workers.channels.instagram import InstagramAdapter
from chat4all_workers.channels.pacing import Pacer, PaceSettings, media_key
from chat4all_workers.channels.whatsapp import WhatsAppAdapter
from chat4all_workers.config import InstagramSettings, WhatsAppSettings
from chat4all_workers.config_values import Secret
from chat4all_workers.delivery.attempts import Attempts, AttemptSettings
from chat4all_workers.delivery.doubt import Doubts, DoubtSettings
from chat4all_workers.delivery.lanes import Lane, LaneSettings
from chat4all_workers.delivery.lease import Lease, Leases
from chat4all_workers.delivery.markers import (
    Marker,
    ProviderVerdicts,
    SendMarkers,
    State,
    marker_key,
    read_marker,
)
from chat4all_workers.delivery.outcomes import Outcomes
from chat4all_workers.delivery.provider_index import ProviderIndex
from chat4all_workers.delivery.send import Send
from chat4all_workers.delivery.windows import Windows
from chat4all_workers.formats.message import Message
from chat4all_workers.formats.status_update import StatusUpdate, parse_update
from chat4all_workers.meta.payloads import OutboundMessage
from chat4all_workers.observability.metrics import Metrics
from chat4all_workers.resources import Need, open_resources
from chat4all_workers.role import RoleContext
from harness.deployment import settings_for
from harness.stack import StackEndpoints
from harness.topics import read_topic
from tests.conftest import TopicFactory
from tests.support import Answer, ScriptedApi, metric_value

TOKEN = "EAAG-delivery-test-token"
ACCOUNTS = {"whatsapp": "1000", "instagram": "2000"}
# The record a send is made for ("{topic}:{partition}:{offset}"), as its `failed:` markers say.
ORIGIN = "message_processing:3:120"
MARKER_TTL_S = 600
UNPACED = PaceSettings(max_rate_per_s=0.0, pair_burst=0, pair_interval_s=0.0, recovery_s=30.0)


class Waits:
    """The parts' `wait`: records each delay instead of sleeping it; `meanwhile`, if set, runs
    during each wait (what happens while the part waits)."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.meanwhile: Callable[[], Awaitable[None]] | None = None

    async def __call__(self, delay_s: float) -> None:
        self.delays.append(delay_s)
        if self.meanwhile is not None:
            await self.meanwhile()


@dataclass
class Rig:
    """One channel's delivery parts, and what a test reads of their effects."""

    stack: StackEndpoints
    ctx: RoleContext
    redis: aioredis.Redis
    api: ScriptedApi
    adapter: ChannelAdapter
    markers: SendMarkers
    index: ProviderIndex
    leases: Leases
    outcomes: Outcomes
    doubts: Doubts
    lane: Lane
    attempts: Attempts
    waits: Waits
    status_topic: str

    async def provider_word(self, key: str, provider_message_id: str) -> None:
        """The webhooks role's side: a status of the send recorded in its marker."""
        verdicts = ProviderVerdicts(self.redis, self.markers.pipe, ttl_s=MARKER_TTL_S)
        await verdicts.record([(key, provider_message_id)])

    @property
    def channel(self) -> str:
        return self.lane.channel

    def send(self, text: str = "hello", *, conversation: int = 42) -> Send:
        """A new message's send on this channel, for the record at ORIGIN."""
        message_id = str(uuid.uuid4())
        recipient = "+5511999990000" if self.channel == "whatsapp" else "17841400000000"
        message = Message(
            message_id=message_id,
            conversation_id=conversation,
            sender_id=7,
            sender_username=None,
            kind="text",
            content=text,
            file_id=None,
            channels=(self.channel,),
            recipients={self.channel: recipient},
            created_at=None,
        )
        outbound = OutboundMessage(message_id, conversation, recipient, "text", text=text)
        key = self.ctx.resources.redis_key(marker_key(message_id, self.channel))
        return Send(message, self.channel, self.lane, key, ORIGIN, outbound, failures=[])

    async def claim(self, send: Send) -> Lease:
        """The send's lease, claimed as the router claims it."""
        claim = await self.leases.claim(send.key, send.origin)
        assert claim.state is State.CLAIMED, claim
        return Lease(send.key, claim.lease)

    async def marker(self, send: Send) -> Marker:
        return read_marker(await self.redis.get(send.key))

    async def statuses(self) -> list[StatusUpdate]:
        """Every status update the parts produced, in order."""
        return [parse_update(r.value) for r in await read_topic(self.stack, self.status_topic)]

    def in_doubt(self, resolution: str) -> float:
        labels = {"channel": self.channel, "resolution": resolution}
        return metric_value(self.ctx.metrics.router_in_doubt, labels)

    def requests(self, outcome: str) -> float:
        labels = {"channel": self.channel, "account": DEFAULT_KEY, "outcome": outcome}
        return metric_value(self.ctx.metrics.channel_requests, labels)

    def processed(self, outcome: str) -> float:
        labels = {"role": "router", "channel": self.channel, "outcome": outcome}
        return metric_value(self.ctx.metrics.messages_processed, labels)


class RigFactory(Protocol):
    async def __call__(
        self,
        *,
        channel: str = ...,
        answers: Sequence[Answer] = ...,
        max_attempts: int = ...,
        retry_base_s: float = ...,
        retry_cap_s: float = ...,
        in_doubt_window_s: float = ...,
        on_unknown_outcome: str = ...,
        throttle_deadline_s: float = ...,
        pacing_recovery_s: float = ...,
        pause_probe_base_s: float = ...,
        lease_s: float = ...,
        pace: PaceSettings = ...,
        pace_debounce_s: float = ...,
        media_pace: PaceSettings | None = ...,
    ) -> Rig: ...


@pytest.fixture
async def delivery(
    stack: StackEndpoints, kafka_topic: TopicFactory, redis_prefix: str
) -> AsyncIterator[RigFactory]:
    """`await delivery(channel=..., answers=[...], max_attempts=..., ...)`: a Rig over resources
    opened for the test and closed after it (the scripted provider too)."""
    async with contextlib.AsyncExitStack() as opened:

        async def build(
            *,
            channel: str = "whatsapp",
            answers: Sequence[Answer] = (),
            max_attempts: int = 3,
            retry_base_s: float = 0.01,
            retry_cap_s: float = 0.05,
            in_doubt_window_s: float = 10.0,
            on_unknown_outcome: str = "resend",
            throttle_deadline_s: float = 60.0,
            pacing_recovery_s: float = 30.0,
            pause_probe_base_s: float = 0.0,
            lease_s: float = 30.0,
            pace: PaceSettings = UNPACED,
            pace_debounce_s: float = 1.0,
            media_pace: PaceSettings | None = None,
        ) -> Rig:
            status_topic = await kafka_topic(prefix="statuses")
            settings = settings_for(
                stack,
                redis_prefix=redis_prefix,
                topics={"message_status_updates": status_topic},
                kafka={"linger_ms": 0},
            )
            metrics = Metrics()
            needs = frozenset({Need.KAFKA, Need.REDIS, Need.HTTP})
            resources = await opened.enter_async_context(open_resources(settings, metrics, needs))
            api = await opened.enter_async_context(ScriptedApi(answers))
            ctx = RoleContext("router", settings, resources, metrics, asyncio.Event())
            adapter = _adapter(channel, api.base_url, resources.http_client())
            redis = resources.redis_client()
            markers = SendMarkers(
                redis, resources.redis_pipeline(), ttl_s=MARKER_TTL_S, lease_s=lease_s
            )
            index = ProviderIndex(
                redis, key=resources.redis_key, ttl_s=MARKER_TTL_S, pipe=markers.pipe
            )
            leases = Leases(ctx, markers, index)
            outcomes = Outcomes(
                resources.kafka(),
                leases,
                topic=status_topic,
                metrics=metrics,
                spawn=resources.spawn(),
            )
            doubts = Doubts(
                ctx,
                leases,
                outcomes,
                settings=DoubtSettings(in_doubt_window_s, on_unknown_outcome, max_attempts),
                channels=[channel],
            )
            waits = Waits()
            pacer = Pacer(
                redis,
                account_key=resources.redis_key(f"pace:{channel}:{adapter.account}"),
                settings=pace,
                debounce_s=pace_debounce_s,
            )
            media_pacer = (
                None
                if media_pace is None
                else Pacer(
                    redis,
                    account_key=media_key(resources.redis_key(f"pace:{channel}:{adapter.account}")),
                    settings=media_pace,
                )
            )
            lane = Lane(
                Account(
                    channel=channel,
                    key=DEFAULT_KEY,
                    provider_id=adapter.account,
                    app_id=default_app_id(channel),
                    token=Secret(TOKEN),
                    max_rate_per_s=pace.max_rate_per_s,
                    pair_burst=pace.pair_burst,
                    pair_interval_s=pace.pair_interval_s,
                ),
                adapter,
                pacer=pacer,
                media_pacer=media_pacer,
                settings=LaneSettings(
                    retry_base_s,
                    retry_cap_s,
                    throttle_deadline_s,
                    pacing_recovery_s,
                    pause_probe_base_s,
                    pause_probe_base_s,
                ),
                timeout_s=2.0,
                metrics=metrics,
                wait=waits,
            )
            windows = Windows(
                redis,
                resources.redis_pipeline(),
                key=resources.redis_key,
                memory_s=settings.delivery.window_memory_s,
            )
            attempts = Attempts(
                leases,
                outcomes,
                doubts,
                windows,
                settings=AttemptSettings(max_attempts, retry_base_s, retry_cap_s),
                metrics=metrics,
                wait=waits,
            )
            return Rig(
                stack=stack,
                ctx=ctx,
                redis=redis,
                api=api,
                adapter=adapter,
                markers=markers,
                index=index,
                leases=leases,
                outcomes=outcomes,
                doubts=doubts,
                lane=lane,
                attempts=attempts,
                waits=waits,
                status_topic=status_topic,
            )

        yield build


def _adapter(channel: str, base_url: str, http: Any) -> ChannelAdapter:
    if channel == "whatsapp":
        return WhatsAppAdapter(
            WhatsAppSettings(
                base_url=base_url,
                access_token=Secret(TOKEN),
                phone_number_id=ACCOUNTS["whatsapp"],
                timeout_s=2.0,
            ),
            http,
        )
    return InstagramAdapter(
        InstagramSettings(
            base_url=base_url,
            access_token=Secret(TOKEN),
            user_id=ACCOUNTS["instagram"],
            timeout_s=2.0,
        ),
        http,
    )
