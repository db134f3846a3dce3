"""`whatsapp_mock` and `instagram_mock`: the channel simulators, for development and tests.

Each serves the provider's API on loopback (`mocks.host`, `mocks.whatsapp_port` /
`mocks.instagram_port`) for the environment's account: its id (`whatsapp.phone_number_id`,
`instagram.user_id`), its token (`whatsapp.access_token`, ...) and its rate; and for each of
`mocks.accounts` (many businesses: each its own token, rate and app, whose webhooks go to the
app's own URL). It calls the app
back like Meta: signed webhooks to `mocks.whatsapp_webhook_url` / `mocks.instagram_webhook_url`
(by default the local webhooks role), signed with `whatsapp.app_secret` /
`instagram.app_secret` (the mock plays Meta for this app: the same secret on both sides).
Without a secret it cannot sign, says so once at start-up, and sends no webhook. On stop, the
webhooks still pending are sent at once, until the shutdown deadline's unwind end. They are
`temporary` (never restarted) and not part of `--roles all`.
"""

from __future__ import annotations

import logging

from chat4all_workers.config import InstagramSettings, Settings, WhatsAppSettings
from chat4all_workers.listening import Address
from chat4all_workers.resources import Need
from chat4all_workers.role import Restart, RoleContext, RoleSpec
from chat4all_workers.simulators.accounts import Account, AccountConfig
from chat4all_workers.simulators.mock import MockChannel
from chat4all_workers.simulators.settings import MockSettings

log = logging.getLogger(__name__)


def _account(ctx: RoleContext, channel: str) -> Account:
    """The settings' one account of `channel`."""
    settings = ctx.settings
    own = settings.section(MockSettings)
    provider: WhatsAppSettings | InstagramSettings = getattr(settings, channel)
    config = AccountConfig(
        id=provider.provider_id,
        access_token=provider.access_token.get(),
        rate_per_s=getattr(own, f"{channel}_rate_per_s"),
        webhook_url=getattr(own, f"{channel}_webhook_url"),
        app_secret=provider.app_secret.get(),
    )
    account = Account(config, own, channel=channel, http=ctx.resources.http_client())
    if not config.app_secret:
        log.warning(
            "mock %s: no app secret (%s.app_secret, env %s): its status "
            "webhooks cannot be signed and are not sent; messages stay SENT",
            channel, channel, settings.env_of(f"{channel}.app_secret"),
        )  # fmt: skip
    elif (why := account.callbacks.not_sent) is not None:
        log.warning(
            "mock %s: mocks.%s_webhook_url is %s; no status webhook is sent", channel, channel, why
        )
    return account


def _more_accounts(ctx: RoleContext, channel: str) -> list[Account]:
    """The `mocks.accounts` of `channel`: each posts to its app's own webhook URL."""
    own, http = ctx.settings.section(MockSettings), ctx.resources.http_client()
    base_url = getattr(own, f"{channel}_webhook_url").rstrip("/")
    default_rate = getattr(own, f"{channel}_rate_per_s")
    return [
        Account(
            AccountConfig(
                id=more.provider_id,
                access_token=more.token,
                rate_per_s=default_rate if more.rate_per_s is None else more.rate_per_s,
                webhook_url=f"{base_url}/{more.app}",
                app_secret=more.secret,
            ),
            own,
            channel=channel,
            http=http,
        )
        for more in own.more_accounts(channel)
    ]


def _mock_role(channel: str) -> RoleSpec:
    """The role that serves `channel`'s mock on its port (`mocks.<channel>_port`)."""

    def address(settings: Settings) -> Address:
        """Where the mock listens: `mocks.host` and its channel's port."""
        own, keys = settings.section(MockSettings), ("mocks.host", f"mocks.{channel}_port")
        port = getattr(own, f"{channel}_port")
        return Address.of(own.host, port, keys=keys, env_of=settings.env_of)

    async def run(ctx: RoleContext) -> None:
        own = ctx.settings.section(MockSettings)
        mock = MockChannel(channel, own, [_account(ctx, channel), *_more_accounts(ctx, channel)])
        async with (
            ctx.sockets(address(ctx.settings)) as sockets,
            mock.serving(sockets=sockets, shutdown=ctx.shutdown),
        ):
            ctx.mark_ready()
            await ctx.stopping.wait()

    return RoleSpec(
        name=f"{channel}_mock",
        needs=frozenset({Need.HTTP}),
        run=run,
        settings=MockSettings,
        restart=Restart.TEMPORARY,
        listens=address,
    )


WHATSAPP = _mock_role("whatsapp")
INSTAGRAM = _mock_role("instagram")
