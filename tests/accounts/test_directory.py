"""The accounts directory (accounts/directory.py) over a real PostgreSQL: what it holds at open,
changes made by another connection picked up by notification, a lost listener reconnected and
caught up, the environment's default account first, rows that do not open left out."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from chat4all_workers.accounts import writer
from chat4all_workers.accounts.directory import AccountDirectory, listener_connection
from chat4all_workers.accounts.sealing import Keyring, new_key_line
from chat4all_workers.config import Settings
from chat4all_workers.db import accounts as store
from chat4all_workers.db.migrate import migrate
from chat4all_workers.errors import DependencyRefusedError
from harness.deployment import settings_for
from harness.stack import StackEndpoints
from harness.waiting import eventually

pytestmark = pytest.mark.stack

KEY = new_key_line("k1")
CHANGE_TIMEOUT_S = 15.0  # a reconnection's backoff is at most 5 s
TOKEN = "EAAG-acme-token-0123456789"


@pytest.fixture
async def database(pg_database: str) -> str:
    """A fresh database with every migration applied."""
    conn = await asyncpg.connect(pg_database)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return pg_database


@pytest.fixture
async def conn(database: str) -> AsyncIterator[asyncpg.Connection]:
    """Another connection than the directory's: the writer an operator would be."""
    connection = await asyncpg.connect(database)
    yield connection
    await connection.close()


def settings(
    stack: StackEndpoints,
    database: str,
    *,
    key: str = KEY,
    reload_interval_s: float = 3600.0,
    whatsapp: dict[str, Any] | None = None,
) -> Settings:
    """Notifications only, unless a test says otherwise: the safety net is an hour away."""
    accounts = {"key": key, "reload_interval_s": reload_interval_s}
    return settings_for(stack, database_url=database, accounts=accounts, whatsapp=whatsapp or {})


async def add_account(
    conn: asyncpg.Connection,
    key: str,
    provider_id: str,
    *,
    keyring: Keyring | None = None,
    token: str = TOKEN,
    **paces: Any,
) -> None:
    await writer.put_account(
        conn,
        keyring or Keyring.parse(KEY),
        channel="whatsapp",
        key=key,
        provider_id=provider_id,
        app_id="123",
        token=token,
        **paces,
    )


async def changed(directory: AccountDirectory, since: int) -> None:
    async with asyncio.timeout(CHANGE_TIMEOUT_S):
        await directory.wait_changed(since)


class GatedConnect:
    """The directory's connection factory with a gate: while closed, the database refuses
    connections (as one that is down does). Keeps every connection it made."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.open = True
        self.made: list[asyncpg.Connection] = []

    async def __call__(self) -> asyncpg.Connection:
        if not self.open:
            raise ConnectionRefusedError("the test closed the gate")
        conn = await listener_connection(self.settings)
        self.made.append(conn)
        return conn


# -- at open --------------------------------------------------------------------------------------


async def test_directory_holds_the_environments_default_account_and_apps(
    stack: StackEndpoints, database: str
) -> None:
    config = settings(
        stack, database, whatsapp={"phone_number_id": "1000", "access_token": "env-token"}
    )

    async with AccountDirectory(config) as directory:
        default = directory.find("whatsapp", None)
        no_instagram = directory.find("instagram", None)
        app_ids = sorted(app.app_id for app in directory.apps())

    assert default is not None
    assert (default.key, default.provider_id, default.app_id) == (
        "default",
        "1000",
        "default-whatsapp",
    )
    assert default.token.get() == "env-token"
    assert no_instagram is None
    assert app_ids == ["default-instagram", "default-whatsapp"]


async def test_directory_loads_the_tables_accounts_and_apps_opened(
    stack: StackEndpoints, database: str, conn: asyncpg.Connection
) -> None:
    keyring = Keyring.parse(KEY)
    await writer.put_app(conn, keyring, app_id="123", secret="app-secret", verify_token="verify")
    await add_account(conn, "acme", "1001")
    await add_account(conn, "paced", "1002", max_rate_per_s=5.0, pair_burst=2, pair_interval_s=1.5)

    async with AccountDirectory(settings(stack, database)) as directory:
        acme = directory.find("whatsapp", "acme")
        paced = directory.by_provider_id("whatsapp", "1002")
        app = directory.app("123")
        stats = directory.stats()

    assert acme is not None
    assert paced is not None
    assert app is not None
    assert (acme.token.get(), acme.version, acme.enabled) == (TOKEN, 1, True)
    whatsapp = config_default_paces()
    assert (acme.max_rate_per_s, acme.pair_burst, acme.pair_interval_s) == whatsapp
    assert (paced.key, paced.max_rate_per_s, paced.pair_burst, paced.pair_interval_s) == (
        "paced",
        5.0,
        2,
        1.5,
    )
    assert (app.secret.get(), app.verify_token.get()) == ("app-secret", "verify")
    assert stats["accounts"]["whatsapp"] == {"enabled": 2, "disabled": 0}
    assert stats["apps"] == 3
    assert stats["reloads"] == {"open": 1}


def config_default_paces() -> tuple[float, int, float]:
    section = Settings().whatsapp
    return (section.max_rate_per_s, section.pair_burst, section.pair_interval_s)


async def test_directory_without_the_tables_says_to_migrate(
    stack: StackEndpoints, pg_database: str
) -> None:
    with pytest.raises(DependencyRefusedError, match="run `chat4all-workers db migrate`"):
        async with AccountDirectory(settings(stack, pg_database)):
            pass


async def test_directory_closes_its_listener_connection(
    stack: StackEndpoints, database: str, conn: asyncpg.Connection
) -> None:
    gate = GatedConnect(settings(stack, database))

    async with AccountDirectory(gate.settings, connect=gate):
        listening = not gate.made[0].is_closed()

    assert listening
    assert gate.made[0].is_closed()


# -- changes while open ----------------------------------------------------------------------------


async def test_directory_picks_up_an_added_account_by_notification(
    stack: StackEndpoints,
    database: str,
    conn: asyncpg.Connection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with AccountDirectory(settings(stack, database)) as directory:
        before = directory.generation
        await add_account(conn, "acme", "1001")
        await changed(directory, before)
        acme = directory.find("whatsapp", "acme")
        stats = directory.stats()

    assert acme is not None
    assert acme.token.get() == TOKEN
    assert stats["reloads"].get("notification", 0) >= 1
    assert "interval" not in stats["reloads"]
    assert TOKEN not in caplog.text


async def test_directory_sees_a_disabled_account_as_disabled(
    stack: StackEndpoints, database: str, conn: asyncpg.Connection
) -> None:
    await add_account(conn, "acme", "1001")

    async with AccountDirectory(settings(stack, database)) as directory:
        before = directory.generation
        await store.set_enabled(conn, "whatsapp", "acme", enabled=False)
        await changed(directory, before)
        found = directory.find("whatsapp", "acme")
        by_number = directory.by_provider_id("whatsapp", "1001")
        stats = directory.stats()

    assert found is not None
    assert found.enabled is False
    assert by_number == found
    assert stats["accounts"]["whatsapp"] == {"enabled": 0, "disabled": 1}


async def test_directory_sees_a_rotated_token_with_a_new_version(
    stack: StackEndpoints, database: str, conn: asyncpg.Connection
) -> None:
    await add_account(conn, "acme", "1001")

    async with AccountDirectory(settings(stack, database)) as directory:
        before = directory.generation
        await writer.rotate_token(
            conn, Keyring.parse(KEY), channel="whatsapp", key="acme", token="EAAG-rotated"
        )
        await changed(directory, before)
        rotated = directory.find("whatsapp", "acme")

    assert rotated is not None
    assert (rotated.token.get(), rotated.version) == ("EAAG-rotated", 2)


async def test_directory_reconnects_a_terminated_listener_and_catches_up(
    stack: StackEndpoints, database: str, conn: asyncpg.Connection
) -> None:
    gate = GatedConnect(settings(stack, database))
    async with AccountDirectory(gate.settings, connect=gate) as directory:
        before = directory.generation
        gate.open = False
        await conn.execute("SELECT pg_terminate_backend($1)", gate.made[0].get_server_pid())
        await eventually(lambda: not directory.stats()["listening"], message="listener lost")
        await add_account(conn, "meanwhile", "1001")  # its notification reaches no one
        missed = directory.find("whatsapp", "meanwhile")
        gate.open = True
        await changed(directory, before)
        caught_up = directory.find("whatsapp", "meanwhile")
        stats = directory.stats()

    assert missed is None
    assert caught_up is not None
    assert stats["reloads"]["reconnect"] == 1
    assert stats["listening"] is True
    assert len(gate.made) == 2


async def test_directory_reloads_everything_on_the_safety_net_interval(
    stack: StackEndpoints, database: str
) -> None:
    config = settings(stack, database, reload_interval_s=0.05)

    async with AccountDirectory(config) as directory:
        await eventually(
            lambda: directory.stats()["reloads"].get("interval", 0) >= 3,
            message="three interval reloads",
        )
        generation = directory.generation

    assert generation == 0  # nothing changed: the reloads changed nothing either


async def test_directory_wait_changed_returns_at_once_for_a_past_generation(
    stack: StackEndpoints, database: str, conn: asyncpg.Connection
) -> None:
    async with AccountDirectory(settings(stack, database)) as directory:
        await add_account(conn, "acme", "1001")
        await changed(directory, 0)

        async with asyncio.timeout(1):
            now = await directory.wait_changed(0)

    assert now == 1


# -- precedence and rows left out -----------------------------------------------------------------


async def test_directory_environments_default_account_wins_over_a_row_with_its_number(
    stack: StackEndpoints, database: str, conn: asyncpg.Connection
) -> None:
    await add_account(conn, "dup", "1000")
    config = settings(
        stack, database, whatsapp={"phone_number_id": "1000", "access_token": "env-token"}
    )

    async with AccountDirectory(config) as directory:
        by_number = directory.by_provider_id("whatsapp", "1000")
        dup = directory.find("whatsapp", "dup")
        stats = directory.stats()

    assert by_number is not None
    assert (by_number.key, by_number.token.get()) == ("default", "env-token")
    assert dup is None
    assert stats["shadowed"] == ["whatsapp/dup"]


async def test_directory_leaves_out_a_row_sealed_with_an_unknown_key_and_loads_the_rest(
    stack: StackEndpoints,
    database: str,
    conn: asyncpg.Connection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await add_account(conn, "lost", "1001", keyring=Keyring.parse(new_key_line("k9")))
    await add_account(conn, "acme", "1002")

    async with AccountDirectory(settings(stack, database)) as directory:
        lost = directory.find("whatsapp", "lost")
        acme = directory.find("whatsapp", "acme")
        stats = directory.stats()

    assert lost is None
    assert acme is not None
    assert list(stats["unsealable"]) == ["whatsapp/lost"]
    assert "sealed with key 'k9'" in stats["unsealable"]["whatsapp/lost"]
    assert caplog.text.count("whatsapp/lost left out") == 1
    assert TOKEN not in caplog.text


async def test_directory_without_an_accounts_key_serves_the_environments_account(
    stack: StackEndpoints, database: str, conn: asyncpg.Connection
) -> None:
    await add_account(conn, "acme", "1001")
    config = settings(
        stack, database, key="", whatsapp={"phone_number_id": "1000", "access_token": "t"}
    )

    async with AccountDirectory(config) as directory:
        default = directory.find("whatsapp", None)
        stats = directory.stats()

    assert default is not None
    assert (
        "no accounts key: set ACCOUNTS_KEY or ACCOUNTS_KEY_FILE"
        in stats["unsealable"]["whatsapp/acme"]
    )
