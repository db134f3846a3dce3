"""The router's parts, assembled once per router (roles/router.py orchestrates them).

Markers and the provider index over the process's Redis auto-pipeline, leases, outcomes (status
emission), sends in doubt, conversation windows, the attempts, the outbound messages (file
links), and one lane per channel (its adapter, pace and pause). `handing_back` is the wait they
all use: a sleep that hands the record back (RetryableError) once the process stops.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from chat4all_workers.channels.base import ChannelAdapter
from chat4all_workers.channels.pacing import Pacer
from chat4all_workers.delivery.attempts import Attempts, AttemptSettings, Wait
from chat4all_workers.delivery.doubt import Doubts, DoubtSettings
from chat4all_workers.delivery.lanes import Lane, LaneSettings, pace_settings
from chat4all_workers.delivery.lease import Leases
from chat4all_workers.delivery.markers import SendMarkers
from chat4all_workers.delivery.outbound import Outbound
from chat4all_workers.delivery.outcomes import Outcomes
from chat4all_workers.delivery.provider_index import ProviderIndex
from chat4all_workers.delivery.windows import Windows
from chat4all_workers.errors import RetryableError
from chat4all_workers.kafka.held import held
from chat4all_workers.role import RoleContext
from chat4all_workers.waiting import wait_event


@dataclass(frozen=True)
class RouterTuning:
    """The router's own settings the parts read (roles/router.py RouterSettings)."""

    max_attempts: int
    retry_base_s: float
    retry_cap_s: float
    in_doubt_window_s: float
    on_unknown_outcome: str
    throttle_deadline_s: float
    pacing_recovery_s: float
    pause_probe_base_s: float
    pause_probe_cap_s: float


@dataclass(frozen=True)
class Parts:
    leases: Leases
    outcomes: Outcomes
    doubts: Doubts
    windows: Windows
    attempts: Attempts
    outbound: Outbound
    lanes: Mapping[str, Lane]


def handing_back(ctx: RoleContext) -> Wait:
    """Sleep, or hand the record back (RetryableError) once the process stops."""

    async def wait(delay_s: float) -> None:
        if ctx.stopping.is_set():
            raise RetryableError("the process is stopping; handing the record back")
        if delay_s > 0 and await wait_event(ctx.stopping, timeout_s=delay_s):
            raise RetryableError("the process is stopping; handing the record back")

    return wait


def build_parts(
    ctx: RoleContext, adapters: Mapping[str, ChannelAdapter], tuning: RouterTuning
) -> Parts:
    settings, resources, wait = ctx.settings, ctx.resources, handing_back(ctx)
    redis, pipe = resources.redis_client(), resources.redis_pipeline()
    # A lease covers one attempt and the backoff before it, and is renewed per attempt; a
    # worker that dies mid-send blocks its messages for at most this long.
    timeout_s = max(getattr(settings, name).timeout_s for name in adapters)
    lease_s = timeout_s + tuning.retry_cap_s + 2.0
    markers = SendMarkers(redis, pipe, ttl_s=settings.delivery.dedup_ttl_s, lease_s=lease_s)
    # Instagram's read receipts name only the provider's id: remembered when a send is marked
    # done (riding the same pipeline).
    index = ProviderIndex(
        redis, key=resources.redis_key, ttl_s=settings.delivery.provider_index_ttl_s, pipe=pipe
    )
    leases = Leases(ctx, markers, index)
    outcomes = Outcomes(
        resources.kafka(), leases, topic=settings.topics.message_status_updates, metrics=ctx.metrics
    )
    doubt = DoubtSettings(tuning.in_doubt_window_s, tuning.on_unknown_outcome, tuning.max_attempts)
    doubts = Doubts(ctx, leases, outcomes, settings=doubt, channels=adapters)
    windows = Windows(
        redis, pipe, key=resources.redis_key, memory_s=settings.delivery.window_memory_s
    )
    attempts = Attempts(
        leases,
        outcomes,
        doubts,
        windows,
        settings=AttemptSettings(tuning.max_attempts, tuning.retry_base_s, tuning.retry_cap_s),
        metrics=ctx.metrics,
        wait=wait,
    )
    outbound = Outbound(
        pool=resources.postgres(),
        s3=resources.s3_client(),
        bucket=settings.s3.bucket,
        link_expiry_s=settings.files.download_url_expiry_s,
    )
    lanes = {name: _lane(ctx, adapter, tuning, wait) for name, adapter in adapters.items()}
    return Parts(leases, outcomes, doubts, windows, attempts, outbound, lanes)


def _lane(ctx: RoleContext, adapter: ChannelAdapter, tuning: RouterTuning, wait: Wait) -> Lane:
    section = getattr(ctx.settings, adapter.name)
    pacer = Pacer(
        ctx.resources.redis_client(),
        account_key=ctx.resources.redis_key(f"pace:{adapter.name}:{adapter.account}"),
        settings=pace_settings(section, recovery_s=tuning.pacing_recovery_s),
        sleep=wait,
        hold=held,
    )
    settings = LaneSettings(
        tuning.retry_base_s,
        tuning.retry_cap_s,
        tuning.throttle_deadline_s,
        tuning.pacing_recovery_s,
        tuning.pause_probe_base_s,
        tuning.pause_probe_cap_s,
    )
    return Lane(
        adapter,
        pacer=pacer,
        settings=settings,
        timeout_s=section.timeout_s,
        metrics=ctx.metrics,
        wait=wait,
    )
