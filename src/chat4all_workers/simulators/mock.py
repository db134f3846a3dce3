"""One channel's mock: a local simulator of the WhatsApp Cloud API or the Instagram Messaging
API, for development and tests (the roles of simulators/roles.py serve one each).

It serves the provider's API (simulators/api.py) and the mock's control endpoints
(`/__mock__/*`, simulators/control.py) over the accounts it plays (simulators/accounts.py), and
calls the app back like Meta: signed webhooks POSTed to each account's webhook URL
(simulators/callbacks.py), after the media of a message was fetched (simulators/processing.py)
or when a user writes (simulators/inbox.py). Like Meta, a request it accepted is processed to
the end even when the client stopped waiting (timed out, disconnected): that is what makes a
provider slower than the client's timeout a real test of the router's in-doubt handling.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import AsyncIterator, Sequence

from aiohttp import web

from chat4all_workers.deadline import ShutdownDeadline
from chat4all_workers.serving import serving
from chat4all_workers.simulators.accounts import Account
from chat4all_workers.simulators.api import ProviderApi
from chat4all_workers.simulators.control import Control
from chat4all_workers.simulators.inbox import Inbox
from chat4all_workers.simulators.ledger import Ledger
from chat4all_workers.simulators.processing import Processing
from chat4all_workers.simulators.settings import MockSettings

_FLUSH_CAP_S = 10.0  # the longest a stopping mock flushes its webhooks


class MockChannel:
    def __init__(
        self,
        channel: str,
        settings: MockSettings,
        accounts: Sequence[Account],
        *,
        seed: int | None = None,
    ) -> None:
        self.channel = channel
        self.settings = settings
        self.accounts = {account.id: account for account in accounts}
        self.ledger = Ledger(channel)
        self.inbox = Inbox(channel, self.ledger)
        self._processing = Processing(channel, settings, self.ledger)
        self._api = ProviderApi(
            channel,
            settings,
            self.accounts,
            ledger=self.ledger,
            processing=self._processing,
            draws=random.Random(seed),
        )
        self._control = Control(channel, self.accounts, self.ledger, self.inbox)

    def app(self) -> web.Application:
        app = web.Application()
        self._api.add_routes(app)
        self._control.add_routes(app)
        return app

    @contextlib.asynccontextmanager
    async def serving(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        sockets: Sequence[socket.socket] = (),
        shutdown: ShutdownDeadline | None = None,
    ) -> AsyncIterator[int]:
        """Serve on the listening `sockets` (else on host:port) and call back until the block
        ends (the users of
        `open_windows_for` write first), then finish the requests and media fetches under way
        and flush the pending webhooks, until the shutdown deadline's unwind end (the
        supervisor cancels roles at the next point) and at most `_FLUSH_CAP_S`; yields the
        bound port."""
        accounts = list(self.accounts.values())
        loop = asyncio.get_running_loop()
        async with asyncio.TaskGroup() as tasks:
            calling_back = [tasks.create_task(a.callbacks.run()) for a in accounts]
            try:
                async with self._processing.running():
                    # handler_cancellation=False (aiohttp's default, said out loud): a request
                    # whose client went away is still processed to the end, as Meta's would be.
                    async with serving(
                        self.app(),
                        host=host,
                        port=port,
                        sockets=sockets,
                        handler_cancellation=False,
                        shutdown_timeout=5.0,
                    ) as bound:
                        try:
                            users = self.settings.users_to_open(self.channel)
                            self.inbox.open_windows(users, accounts)
                            yield bound
                        finally:
                            # From now on every webhook is due at once; the requests still
                            # under way finish (and call back) while the server closes.
                            for account in accounts:
                                account.callbacks.start_flushing()
                    until = loop.time() + _FLUSH_CAP_S
                    if shutdown is not None:
                        until = min(until, shutdown.unwind_end())
                    await self._processing.finish(until)
                for account in accounts:
                    await account.callbacks.flush(until)
            finally:
                for task in calling_back:
                    task.cancel()
