"""The accounts directory: every sending account and Meta app a process may use, kept current
while it runs, read with plain dictionary lookups (the router and the webhooks role ask on
every message).

Opened (resources.py, `Need.ACCOUNTS`) it holds the environment's default account and app per
channel plus the table's (accounts/snapshot.py), and owns one task, in a task group of its own,
that keeps them current:

- A dedicated connection (not one of the pool's: it is held for as long as the process runs,
  and a pool resets its connections' listeners) `LISTEN`s on `chat4all_accounts`, which the
  tables' triggers notify in the transaction of every change (db/accounts.py).
- Each notification causes a full reload, not a patch of the one row it names. The tables are
  small (hundreds of accounts, not millions), the reload reads both in one snapshot (an account
  and the app a transaction added with it arrive together), only changed rows are decrypted
  again, and a burst of notifications is one or two reloads; a patch per row would have to get
  deletes, a provider id moving between keys and the environment's precedence right on its
  own, in a second code path beside the full reload that start-up, reconnection and the safety
  net need anyway.
- A lost connection (a database restart, `pg_terminate_backend`) is reconnected with backoff,
  then followed by a full reload: notifications sent meanwhile were lost. Until then the last
  snapshot keeps serving.
- A full reload every `accounts.reload_interval_s` is the safety net (a connection that died
  silently shows up there too: its query times out).
- A lookup that missed may ask for a reload at once (`refresh`): the router does before it fails
  a message naming an unknown account, since an account added a moment ago may reach the router
  before its notification does.

The task never ends the process: a failure is logged once per change of state and retried.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any

import asyncpg

from chat4all_workers.accounts.keys import load_keyring
from chat4all_workers.accounts.model import DEFAULT_KEY, Account, MetaApp
from chat4all_workers.accounts.snapshot import Snapshot, Unsealer, build_snapshot
from chat4all_workers.background import TaskOwner
from chat4all_workers.backoff import backoff_delay_s
from chat4all_workers.config import CHANNELS, Settings
from chat4all_workers.db import accounts as store
from chat4all_workers.errors import DependencyRefusedError
from chat4all_workers.waiting import wait_event

log = logging.getLogger(__name__)

Connect = Callable[[], Awaitable[asyncpg.Connection]]
# How the listener shows in pg_stat_activity.
APPLICATION_NAME = "chat4all-workers accounts"
MIGRATE_HINT = "the accounts tables are missing: run `chat4all-workers db migrate`"
_CONNECT_TIMEOUT_S = 10.0
_CLOSE_TIMEOUT_S = 2.0
_RECONNECT_BASE_S = 0.2
_RECONNECT_CAP_S = 5.0
_REFRESH_SPACING_S = 1.0  # reloads asked for by lookups that missed: at most one this often
# A database that is away or restarting; anything else is logged with its traceback (a bug).
_EXPECTED = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


async def listener_connection(settings: Settings) -> asyncpg.Connection:
    """The directory's own connection to the deployment's database."""
    return await asyncpg.connect(
        settings.postgres.url.get(),
        timeout=_CONNECT_TIMEOUT_S,
        server_settings={"application_name": APPLICATION_NAME},
    )


class AccountDirectory(TaskOwner):
    """`async with AccountDirectory(settings) as directory: directory.find("whatsapp", "acme")`.

    `connect` opens the listening connection (default: `listener_connection`); opening raises
    what it raises, so the caller decides how long to wait for the database (resources.py
    retries like every other dependency), ConfigError for a bad accounts key, and
    DependencyRefusedError when the tables are missing (migrations not applied).
    """

    def __init__(self, settings: Settings, *, connect: Connect | None = None) -> None:
        self._settings = settings
        self._connect = connect or partial(listener_connection, settings)
        self._unsealer = Unsealer(None)
        self._snapshot = build_snapshot(settings, self._unsealer, [], [])
        self._generation = 0
        self._change = asyncio.Event()  # set, and replaced, at each change
        self._wake = asyncio.Event()  # a notification came, or the connection was lost
        self._listening = False
        self._conn: asyncpg.Connection | None = None  # the one listening now
        self._reloads: collections.Counter[str] = collections.Counter()
        # Reloads started and finished, so `refresh` can wait for one that began after it asked.
        self._started = 0
        self._finished = 0
        self._finished_event = asyncio.Event()
        self._refresh_due: asyncio.TimerHandle | None = None
        self._last_refresh = -math.inf
        self._last_reload: datetime | None = None
        self._problem: str | None = None  # the watch's failure, logged once per change
        self._reported: dict[str, str] = {}  # rows left out, as last logged
        self._watcher: asyncio.Task[None] | None = None

    # -- what readers use: no I/O ------------------------------------------------------------------

    def find(self, channel: str, key: str | None) -> Account | None:
        """The account messages name `key` on `channel` (None: the default one). Disabled ones
        too (`enabled` False): the caller tells an unknown account from a disabled one."""
        return self._snapshot.accounts.get((channel, DEFAULT_KEY if key is None else key))

    def by_provider_id(self, channel: str, provider_id: str) -> Account | None:
        """The account whose number (phone number id / Instagram account id) this is."""
        return self._snapshot.by_provider.get((channel, provider_id))

    def app(self, app_id: str) -> MetaApp | None:
        return self._snapshot.apps.get(app_id)

    def apps(self) -> Sequence[MetaApp]:
        return self._snapshot.app_list

    def accounts(self) -> Sequence[Account]:
        return self._snapshot.account_list

    @property
    def generation(self) -> int:
        """Bumped by every reload that changed what the lookups answer."""
        return self._generation

    async def wait_changed(self, since: int) -> int:
        """Wait until `generation` is past `since` (at once if it already is); the new one.
        Read `generation` first, then act, then wait: a change in between is not missed."""
        while self._generation <= since:
            await self._change.wait()
        return self._generation

    async def refresh(self, *, timeout_s: float = 5.0) -> None:
        """Look again now, and return once a reload that began after this call is done (or
        `timeout_s` passed: the last snapshot stays). For a lookup that missed: an account
        added a moment ago whose notification is still on its way. Misses share reloads, and
        start at most one per `_REFRESH_SPACING_S`, so a flood of messages naming no account
        costs the database one small query a second."""
        wanted = self._started + 1
        loop = asyncio.get_running_loop()
        if self._refresh_due is None:
            delay = max(0.0, self._last_refresh + _REFRESH_SPACING_S - loop.time())
            self._refresh_due = loop.call_later(delay, self._refresh_now)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self._finished < wanted:
                    await self._finished_event.wait()

    def _refresh_now(self) -> None:
        self._refresh_due = None
        self._last_refresh = asyncio.get_running_loop().time()
        self._wake.set()

    def stats(self) -> dict[str, Any]:
        """For /readyz: how many accounts per channel, apps, the listener, the last reload, and
        the rows left out (never a secret)."""
        counts = {channel: {"enabled": 0, "disabled": 0} for channel in CHANNELS}
        for account in self._snapshot.account_list:
            counts[account.channel]["enabled" if account.enabled else "disabled"] += 1
        last = self._last_reload
        return {
            "accounts": counts,
            "apps": len(self._snapshot.app_list),
            "generation": self._generation,
            "listening": self._listening,
            "last_reload": None if last is None else last.isoformat(timespec="milliseconds"),
            "reloads": dict(self._reloads),
            "unsealable": dict(self._snapshot.unsealable),
            "shadowed": list(self._snapshot.shadowed),
            "without_app": list(self._snapshot.without_app),
        }

    # -- open and close ------------------------------------------------------------------------

    async def __aenter__(self) -> AccountDirectory:
        self._unsealer = Unsealer(load_keyring(self._settings))
        conn = await self._connect()
        try:
            await self._listen(conn)
            await self._reload(conn, "open")
        except asyncpg.UndefinedTableError:
            await _close_connection(conn)
            raise DependencyRefusedError("postgres", MIGRATE_HINT) from None
        except BaseException:
            await _close_connection(conn)
            raise
        stats = self.stats()
        log.info(
            "accounts: %s; %d apps; listening for changes",
            ", ".join(f"{ch} {n['enabled']} enabled" for ch, n in stats["accounts"].items()),
            stats["apps"],
        )
        tasks = await self._open_tasks()
        self._watcher = tasks.create_task(self._watch(conn), name="accounts-directory")
        return self

    async def _close(self) -> None:
        if self._refresh_due is not None:
            self._refresh_due.cancel()
        if self._watcher is not None:
            self._watcher.cancel()
        await self._close_tasks()
        # A watch cancelled before it first ran never reached its `finally`.
        if self._conn is not None:
            await _close_connection(self._conn)
        self._listening = False

    # -- the watch ------------------------------------------------------------------------------

    async def _watch(self, conn: asyncpg.Connection) -> None:
        """Reload on every notification and every interval; on any failure, reconnect and
        reload. Never raises but to be cancelled."""
        try:
            while True:
                try:
                    await self._follow(conn)
                except Exception as exc:  # noqa: BLE001 - the last snapshot keeps serving: log, reconnect
                    self._failed("the listener connection failed", exc)
                self._listening = False
                await _close_connection(conn)
                conn = await self._reconnect()
        finally:
            await _close_connection(conn)

    async def _follow(self, conn: asyncpg.Connection) -> None:
        interval_s = self._settings.accounts.reload_interval_s
        while True:
            notified = await wait_event(self._wake, timeout_s=interval_s)
            self._wake.clear()
            if conn.is_closed():
                raise ConnectionError("connection closed")
            await self._reload(conn, "notification" if notified else "interval")

    async def _reconnect(self) -> asyncpg.Connection:
        """Connect, listen and reload, with backoff, until it works."""
        attempt = 0
        while True:
            await asyncio.sleep(
                backoff_delay_s(attempt, base_s=_RECONNECT_BASE_S, cap_s=_RECONNECT_CAP_S)
            )
            attempt += 1
            conn: asyncpg.Connection | None = None
            try:
                conn = await self._connect()
                await self._listen(conn)
                await self._reload(conn, "reconnect")
            except Exception as exc:  # noqa: BLE001 - retried with backoff, logged once
                self._listening = False
                if conn is not None:
                    await _close_connection(conn)
                self._failed("reconnecting the listener failed", exc)
                continue
            except BaseException:
                if conn is not None:
                    await _close_connection(conn)
                raise
            if self._problem is not None:
                log.info("accounts: listening again (after %d attempts); reloaded", attempt)
                self._problem = None
            return conn

    async def _listen(self, conn: asyncpg.Connection) -> None:
        """Listen before the reload that follows, so no change falls between the two."""
        self._wake.clear()
        self._conn = conn
        conn.add_termination_listener(self._on_lost)
        await conn.add_listener(store.NOTIFY_CHANNEL, self._on_notification)
        self._listening = True

    def _on_notification(
        self, conn: asyncpg.Connection, pid: int, channel: str, payload: str
    ) -> None:
        log.debug("accounts: %s changed", payload)
        self._wake.set()

    def _on_lost(self, conn: asyncpg.Connection) -> None:
        # Called soon after the close, maybe once a new connection listens: only the current
        # connection's loss counts.
        if conn is self._conn:
            self._listening = False
            self._wake.set()

    async def _reload(self, conn: asyncpg.Connection, cause: str) -> None:
        self._started += 1
        try:
            app_rows, account_rows = await store.load(
                conn, timeout_s=self._settings.postgres.command_timeout_s
            )
        finally:
            self._finished = self._started
            self._finished_event.set()
            self._finished_event = asyncio.Event()
        snapshot = build_snapshot(self._settings, self._unsealer, app_rows, account_rows)
        self._reloads[cause] += 1
        self._last_reload = datetime.now(UTC)
        self._report_left_out(snapshot)
        changed = not snapshot.same_view(self._snapshot)
        self._snapshot = snapshot
        if changed:
            self._generation += 1
            self._change.set()
            self._change = asyncio.Event()

    def _report_left_out(self, snapshot: Snapshot) -> None:
        """Each row left out is logged once (and again if its reason changes), its return too."""
        now = dict(snapshot.unsealable)
        now.update(
            (ref, "the environment's default account has its provider id: left out")
            for ref in snapshot.shadowed
        )
        for ref, problem in now.items():
            if self._reported.get(ref) != problem:
                log.warning("accounts: %s left out: %s", ref, problem)
        for ref in self._reported.keys() - now.keys():
            log.info("accounts: %s loads again", ref)
        self._reported = now

    def _failed(self, what: str, exc: Exception) -> None:
        problem = f"{what}: {type(exc).__name__}"
        if problem != self._problem:
            log.warning(
                "accounts: %s (%s); serving the last accounts loaded, retrying",
                what,
                exc,
                exc_info=not isinstance(exc, _EXPECTED),
            )
        self._problem = problem


async def _close_connection(conn: asyncpg.Connection) -> None:
    """Close gracefully, or drop the connection: never waits long, never raises."""
    if conn.is_closed():
        return
    try:
        await conn.close(timeout=_CLOSE_TIMEOUT_S)
    except _EXPECTED:
        conn.terminate()
    except asyncio.CancelledError:
        conn.terminate()
        raise
