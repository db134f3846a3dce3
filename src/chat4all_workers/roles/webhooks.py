"""`webhooks`: the HTTP endpoint Meta calls back with statuses and with users' messages.

`[webhooks] host:port` serves `/webhooks/whatsapp` and `/webhooks/instagram`: Meta's
verification GET and its signed notifications (what Meta sends and why: meta/; one request from
signature to answer: intake/service.py). Each status of one of our messages becomes a
`message_status_updates` record, each user's message an `inbound_messages` record; the
provider's word settles the router's sends in doubt (intake/provider_word.py); 200 only once
stored, 503 otherwise, so Meta's retries cover our outages (intake/storing.py). On stop it turns
unready at once and keeps answering until no POST came for half a second (intake/server.py).
"""

from __future__ import annotations

import logging
from dataclasses import field
from typing import ClassVar

from chat4all_workers.accounts.model import Directory
from chat4all_workers.config import CHANNELS, NON_EMPTY, Settings
from chat4all_workers.delivery.markers import ProviderVerdicts
from chat4all_workers.delivery.provider_index import ProviderIndex
from chat4all_workers.delivery.windows import Windows
from chat4all_workers.frozen import frozen
from chat4all_workers.intake.accounting import Accounting
from chat4all_workers.intake.failures import Failures
from chat4all_workers.intake.http_exchange import Limits
from chat4all_workers.intake.http_server import HttpServer
from chat4all_workers.intake.provider_word import ProviderWord
from chat4all_workers.intake.server import Endpoint, Listener, until_quiet
from chat4all_workers.intake.service import Webhooks
from chat4all_workers.intake.storing import Storing
from chat4all_workers.kafka.originals import OriginalRecords
from chat4all_workers.listening import Address
from chat4all_workers.resources import Need
from chat4all_workers.role import RoleContext, RoleSpec

log = logging.getLogger(__name__)


@frozen(kw_only=True)
class WebhookSettings:
    """`[webhooks]`: the HTTP endpoint Meta calls back (the apps' secrets and verify tokens are
    the channel sections': `whatsapp.app_secret`, ...)."""

    SECTION: ClassVar[str] = "webhooks"

    host: str = field(default="127.0.0.1", metadata=NON_EMPTY)
    port: int = field(default=8200, metadata={"min": 0, "max": 65535})  # 0: any free port
    max_body_bytes: int = 1024 * 1024
    # POSTs in progress at once (bodies in memory); above it, 503 at once and Meta retries.
    max_concurrent_requests: int = 1000
    # A POST whose body takes longer to arrive is answered 408: slow senders cannot hold the slots.
    body_timeout_s: float = 10.0
    # A request's line and headers: at most this many bytes (431 above), arrived within this
    # long of their first byte (408 after it; a new connection's first byte too).
    max_header_bytes: int = field(default=16 * 1024, metadata={"min": 1024})
    header_timeout_s: float = 10.0
    # How long a POST waits for Kafka to acknowledge its records before it answers 503 (Meta
    # retries; the records stay with the producer, which still delivers them: a status is
    # idempotent). Below Meta's own time-out for a webhook.
    store_timeout_s: float = 5.0


def build(
    ctx: RoleContext, originals: OriginalRecords, directory: Directory | None = None
) -> Webhooks:
    """The endpoint's service, over the process's Redis and Kafka producer; the apps and
    accounts it trusts from `directory` (default: the process's)."""
    if directory is None:
        directory = ctx.resources.accounts()
    settings, own = ctx.settings, ctx.settings.section(WebhookSettings)
    redis = ctx.resources.redis_client()
    index = ProviderIndex(
        redis, key=ctx.resources.redis_key, ttl_s=settings.delivery.provider_index_ttl_s
    )
    pipe = ctx.resources.redis_pipeline()
    verdicts = ProviderVerdicts(redis, pipe, ttl_s=settings.delivery.dedup_ttl_s)
    accounting = Accounting(ctx.metrics)
    word = ProviderWord(index, verdicts, key=ctx.resources.redis_key, accounting=accounting)
    windows = Windows(
        redis, pipe, key=ctx.resources.redis_key, memory_s=settings.delivery.window_memory_s
    )
    failures = Failures(
        verdicts,
        originals,
        windows,
        ctx.resources.kafka(),
        key=ctx.resources.redis_key,
        dlq_topic=settings.topics.dlq,
        metrics=ctx.metrics,
    )
    storing = Storing(
        ctx.resources.kafka(),
        spawn=ctx.resources.spawn(),
        dlq_topic=settings.topics.dlq,
        timeout_s=own.store_timeout_s,
        metrics=ctx.metrics,
    )
    return Webhooks(
        settings,
        directory=directory,
        max_body_bytes=own.max_body_bytes,
        max_concurrent_requests=own.max_concurrent_requests,
        word=word,
        failures=failures,
        windows=windows,
        storing=storing,
        accounting=accounting,
        spawn=ctx.resources.spawn(),
    )


def address(settings: Settings) -> Address:
    """Where the role listens: `[webhooks] host:port`."""
    own = settings.section(WebhookSettings)
    keys = ("webhooks.host", "webhooks.port")
    return Address.of(own.host, own.port, keys=keys, env_of=settings.env_of)


def _warn_unconfigured(settings: Settings, service: Webhooks) -> None:
    refused = [channel for channel, taken in service.accepting().items() if not taken]
    if refused:
        envs = ", ".join(settings.env_of(f"{channel}.app_secret") for channel in refused)
        log.warning(
            "webhooks: POSTs refused (403) for %s: no Meta app's secret (set %s, or add an "
            "app: chat4all-workers accounts app-add)",
            ", ".join(refused),
            envs,
        )


async def run(ctx: RoleContext) -> None:
    settings, own = ctx.settings, ctx.settings.section(WebhookSettings)
    originals = OriginalRecords(settings.kafka)
    service, listener = build(ctx, originals), Listener()
    _warn_unconfigured(settings, service)
    limits = Limits(
        max_body_bytes=own.max_body_bytes,
        body_timeout_s=own.body_timeout_s,
        header_timeout_s=own.header_timeout_s,
        max_head_bytes=own.max_header_bytes,
    )
    server = HttpServer(Endpoint(service, listener), limits=limits)
    # An in-flight request waits for Kafka at most store_timeout_s; let it finish.
    grace_s = min(own.store_timeout_s + 1.0, settings.supervisor.shutdown_timeout_s)
    try:
        async with (
            ctx.sockets(address(settings)) as sockets,
            server.serving(sockets=sockets, grace_s=grace_s) as port,
        ):
            listening = f"{own.host}:{port}"
            ctx.publish("webhooks", lambda: {"listening": listening, **service.stats()})
            ctx.report(lambda: service.accounting.report(listening))
            log.info(
                "webhooks: listening on http://%s/webhooks/{%s}", listening, ",".join(CHANNELS)
            )
            ctx.mark_ready()
            await ctx.stopping.wait()
            ctx.mark_unready()
            await until_quiet(service, listener, ctx.shutdown)
    finally:
        ctx.mark_unready()
        await originals.aclose()


ROLE = RoleSpec(
    name="webhooks",
    needs=frozenset({Need.KAFKA, Need.REDIS, Need.ACCOUNTS}),
    run=run,
    settings=WebhookSettings,
    listens=address,
)
