"""The router's parts, assembled once per router (roles/router.py orchestrates them).

Markers and the provider index over the process's Redis auto-pipeline, leases, outcomes (status
emission), sends in doubt, conversation windows, the attempts, the outbound messages (file
links), and the sending accounts: one lane per account (its adapter, pace and pause), built on
its first message from the directory (accounts/). `handing_back` is the wait they
all use: a sleep that hands the record back (RetryableError) once the process stops.
"""

from __future__ import annotations

from collections.abc import Callable

from chat4all_workers.accounts.model import Account, Directory
from chat4all_workers.autopipeline import PipedScript
from chat4all_workers.channels.base import ChannelAdapter
from chat4all_workers.channels.pacing import Pacer, PaceSettings, media_key
from chat4all_workers.config import CHANNELS
from chat4all_workers.delivery.accounts import SendingAccounts
from chat4all_workers.delivery.attempts import Attempts, AttemptSettings
from chat4all_workers.delivery.doubt import Doubts, DoubtSettings
from chat4all_workers.delivery.lanes import Lane, LaneSettings, pace_settings
from chat4all_workers.delivery.lease import Leases
from chat4all_workers.delivery.markers import SendMarkers
from chat4all_workers.delivery.outbound import Outbound
from chat4all_workers.delivery.outcomes import Outcomes
from chat4all_workers.delivery.provider_index import ProviderIndex
from chat4all_workers.delivery.windows import Windows
from chat4all_workers.errors import RetryableError
from chat4all_workers.frozen import frozen
from chat4all_workers.kafka.held import held
from chat4all_workers.role import RoleContext
from chat4all_workers.waiting import Wait, wait_event


@frozen
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
    account_label_limit: int


# The adapter that sends as an account (channels.build_adapter over the process's client).
Connect = Callable[[Account], ChannelAdapter]


@frozen
class Parts:
    leases: Leases
    outcomes: Outcomes
    doubts: Doubts
    windows: Windows
    attempts: Attempts
    outbound: Outbound
    accounts: SendingAccounts


def handing_back(ctx: RoleContext) -> Wait:
    """Sleep, or hand the record back (RetryableError) once the process stops."""

    async def wait(delay_s: float) -> None:
        if ctx.stopping.is_set():
            raise RetryableError("the process is stopping; handing the record back")
        if delay_s > 0 and await wait_event(ctx.stopping, timeout_s=delay_s):
            raise RetryableError("the process is stopping; handing the record back")

    return wait


def build_parts(
    ctx: RoleContext, directory: Directory, connect: Connect, tuning: RouterTuning
) -> Parts:
    settings, resources, wait = ctx.settings, ctx.resources, handing_back(ctx)
    redis, pipe = resources.redis_client(), resources.redis_pipeline()
    # A lease covers one attempt and the backoff before it, and is renewed per attempt; a
    # worker that dies mid-send blocks its messages for at most this long.
    timeout_s = max(getattr(settings, name).timeout_s for name in CHANNELS)
    lease_s = timeout_s + tuning.retry_cap_s + 2.0
    markers = SendMarkers(redis, pipe, ttl_s=settings.delivery.dedup_ttl_s, lease_s=lease_s)
    # Instagram's read receipts name only the provider's id: remembered when a send is marked
    # done (riding the same pipeline).
    index = ProviderIndex(
        redis, key=resources.redis_key, ttl_s=settings.delivery.provider_index_ttl_s, pipe=pipe
    )
    leases = Leases(ctx, markers, index)
    outcomes = Outcomes(
        resources.kafka(),
        leases,
        topic=settings.topics.message_status_updates,
        metrics=ctx.metrics,
        spawn=resources.spawn(),
    )
    doubt = DoubtSettings(tuning.in_doubt_window_s, tuning.on_unknown_outcome, tuning.max_attempts)
    doubts = Doubts(ctx, leases, outcomes, settings=doubt, channels=CHANNELS)
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

    def make_lane(account: Account, label: str) -> Lane:
        return _lane(ctx, account, connect(account), tuning, wait, label)

    def refresh(lane: Lane, account: Account) -> None:
        pacer, media = _pacers(ctx, account, tuning, wait)
        lane.refresh(account, connect(account), pacer, media)

    label_limit = tuning.account_label_limit
    senders = SendingAccounts(
        directory, make_lane=make_lane, refresh=refresh, label_limit=label_limit
    )
    return Parts(leases, outcomes, doubts, windows, attempts, outbound, senders)


def _pacers(
    ctx: RoleContext, account: Account, tuning: RouterTuning, wait: Wait
) -> tuple[Pacer, Pacer | None]:
    """The account's pace, keyed by its provider id: what Meta counts its limits against, so
    every router (and any key naming the same number) shares it; and its slow-media pace where
    the channel has one (`instagram.media_rate_per_s`)."""
    redis, recovery_s = ctx.resources.redis_client(), tuning.pacing_recovery_s
    pipe = ctx.resources.redis_pipeline()

    def scripts(source: str) -> PipedScript:
        return PipedScript(pipe, redis, source)

    key = ctx.resources.redis_key(f"pace:{account.channel}:{account.provider_id}")
    pacer = Pacer(
        redis,
        account_key=key,
        settings=pace_settings(account, recovery_s=recovery_s),
        sleep=wait,
        hold=held,
        scripts=scripts,
    )
    media_rate = getattr(getattr(ctx.settings, account.channel), "media_rate_per_s", 0.0)
    if not media_rate:
        return pacer, None
    media = Pacer(
        redis,
        account_key=media_key(key),
        settings=PaceSettings.media(max_rate_per_s=media_rate, recovery_s=recovery_s),
        sleep=wait,
        hold=held,
        scripts=scripts,
    )
    return pacer, media


def _lane(
    ctx: RoleContext,
    account: Account,
    adapter: ChannelAdapter,
    tuning: RouterTuning,
    wait: Wait,
    label: str,
) -> Lane:
    section = getattr(ctx.settings, account.channel)
    pacer, media = _pacers(ctx, account, tuning, wait)
    settings = LaneSettings(
        tuning.retry_base_s,
        tuning.retry_cap_s,
        tuning.throttle_deadline_s,
        tuning.pacing_recovery_s,
        tuning.pause_probe_base_s,
        tuning.pause_probe_cap_s,
    )
    return Lane(
        account,
        adapter,
        pacer=pacer,
        media_pacer=media,
        settings=settings,
        timeout_s=section.timeout_s,
        metrics=ctx.metrics,
        wait=wait,
        label=label,
    )
