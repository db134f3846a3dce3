"""What a mock does with a message once it accepted it, as Meta does after its answer: fetch the
media from its link, then call the app back (simulators/reports.py: sent, delivered, read; or
failed).

A media message is first fetched (`fetch_media`, simulators/media.py); a link that cannot be
fetched fails it (WhatsApp `sent`, then `failed` with code 131053; Instagram nothing at all). A
message drawn to fail later gets `sent`, then `failed` with `async_failure_code` instead of
delivered and read. The fetches run in a task group of their own while the mock serves; on
stop, those under way may finish until a deadline (each then schedules its webhooks), the
others are cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from chat4all_workers.meta.events import StatusError
from chat4all_workers.simulators import answers
from chat4all_workers.simulators.accounts import Account
from chat4all_workers.simulators.ledger import Accepted, Ledger
from chat4all_workers.simulators.media import MediaFetcher
from chat4all_workers.simulators.reports import Delivery, message_callbacks
from chat4all_workers.simulators.sends import Send
from chat4all_workers.simulators.settings import MockSettings

log = logging.getLogger(__name__)

MEDIA_UPLOAD_ERROR = 131053


class Processing:
    def __init__(self, channel: str, settings: MockSettings, ledger: Ledger) -> None:
        self._channel = channel
        self._settings = settings
        self._ledger = ledger
        self._media = MediaFetcher(timeout_s=settings.media_fetch_timeout_s)
        self._fetches: asyncio.TaskGroup | None = None  # while running
        self._fetching: set[asyncio.Task[None]] = set()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Media can be fetched until the block ends; `finish` first, to bound the wait."""
        async with self._media.open(), asyncio.TaskGroup() as fetches:
            self._fetches = fetches
            try:
                yield
            finally:
                self._fetches = None

    async def finish(self, until: float) -> None:
        """Let the media fetches under way end (each then schedules its webhooks) until the
        loop time `until`; cancel the others."""
        if self._fetching:
            await asyncio.wait(
                set(self._fetching), timeout=until - asyncio.get_running_loop().time()
            )
        if self._fetching:
            log.warning(
                "mock %s: %d media fetch(es) cut short by the shutdown: no webhook for them",
                self._channel, len(self._fetching),
            )  # fmt: skip
            for task in self._fetching:
                task.cancel()

    def start(self, account: Account, accepted: Accepted, send: Send, *, fails_later: bool) -> None:
        """Meta calls back for every message it accepted, ours or not (the webhooks role
        tells): a media message once its link was fetched."""
        if send.media_url is not None and self._settings.fetch_media:
            assert self._fetches is not None, "media is fetched while running"
            task = self._fetches.create_task(
                self._fetch_then_call_back(account, accepted, send, fails_later=fails_later)
            )
            self._fetching.add(task)
            task.add_done_callback(self._fetching.discard)
        else:
            self._call_back(account, accepted, send, self._async_failure(fails_later))

    def _async_failure(self, fails_later: bool) -> StatusError | None:
        if not fails_later:
            return None
        self._ledger.count("async_failed")
        return answers.status_error(self._settings.async_failure_code)

    async def _fetch_then_call_back(
        self, account: Account, accepted: Accepted, send: Send, *, fails_later: bool
    ) -> None:
        """Fetch the media as Meta does before it delivers it; a link that cannot be fetched
        fails the message (WhatsApp: a failed status; Instagram: no webhook at all)."""
        assert send.media_url is not None
        problem = await self._media.problem(send.media_url)
        if problem is None:
            self._ledger.count("media_fetched")
            self._call_back(account, accepted, send, self._async_failure(fails_later))
            return
        self._ledger.count("media_failed")
        log.info(
            "mock %s: the media of %s could not be fetched (%s): the message fails",
            self._channel, accepted.provider_message_id, problem,
        )  # fmt: skip
        if self._channel == "whatsapp":
            self._call_back(account, accepted, send, answers.status_error(MEDIA_UPLOAD_ERROR))

    def _call_back(
        self, account: Account, accepted: Accepted, send: Send, failure: StatusError | None
    ) -> None:
        delivered_s = self._settings.delivered_after_ms / 1000
        read_s = max(self._settings.read_after_ms / 1000, delivered_s)
        stages = message_callbacks(
            self._channel,
            Delivery(delivered_s, read_s, failure),
            account_id=account.id,
            provider_message_id=accepted.provider_message_id,
            recipient=send.user,
            text=send.text,
            callback_data=send.callback,
        )
        account.callbacks.schedule(stages)
