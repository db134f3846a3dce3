"""The connection pools a process shares: opened once, in order, and closed in reverse, each by
the shutdown deadline's end (deadline.py), whatever state its service is in.

Only what the enabled roles declare they need is opened, so a `gc`-only process never connects to
Kafka and a `backfill`-only one never to PostgreSQL. Roles get a typed `Resources`, never a dict,
and never open connections of their own (a Kafka consumer is the exception: a consumer group
member is per role by nature).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import field
from functools import partial
from typing import TypeVar

import aiohttp
import asyncpg
import redis.asyncio as aioredis
import redis.exceptions as redis_errors
from aiokafka.errors import KafkaConnectionError
from miniopy_async.api import Minio
from miniopy_async.error import S3Error, ServerError

from chat4all_workers.accounts.directory import AccountDirectory
from chat4all_workers.autopipeline import AutoPipeline
from chat4all_workers.background import Background, Spawn
from chat4all_workers.backoff import backoff_delay_s
from chat4all_workers.channels.http import HttpClient
from chat4all_workers.config import Settings
from chat4all_workers.deadline import ShutdownDeadline, timeout_at
from chat4all_workers.errors import DependencyRefusedError
from chat4all_workers.frozen import frozen
from chat4all_workers.kafka.breaker import BreakerState
from chat4all_workers.kafka.producer import Producer
from chat4all_workers.observability.metrics import Metrics
from chat4all_workers.storage.s3 import new_client

log = logging.getLogger(__name__)

T = TypeVar("T")
# What "a backing service is unreachable or restarting" looks like from each client library: the
# one list every role uses to tell an outage (retry the work, keep it owned) from a bug (crash).
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    OSError,  # refused, reset, unreachable (aiohttp's ClientOSError is one)
    TimeoutError,
    aiohttp.ClientConnectionError,  # S3 or a channel API dropped the connection
    redis_errors.ConnectionError,  # BusyLoadingError too: Redis is replaying its AOF
    redis_errors.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,  # the connection was closed under the query
    # The server died (kill -9, a crash, a lost node) under a pooled connection: asyncpg loses
    # track of its protocol state ("cannot switch to state 15; another operation (2) is in
    # progress", MagicStack/asyncpg#1069; SQLAlchemy reads it as a disconnect since
    # sqlalchemy/sqlalchemy#13241). The pool terminates that connection on release.
    asyncpg.InternalClientError,
    asyncpg.exceptions.OperatorInterventionError,  # admin/crash shutdown, cannot connect now
    asyncpg.InsufficientResourcesError,  # too many connections, out of memory or disk
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    KafkaConnectionError,
    ServerError,  # an S3 5xx
)
# What "the service answered and said no for good" looks like: a retry cannot change a wrong
# password, a missing permission or a database that does not exist. `refusal` picks these out
# (redis-py makes its authentication errors connection errors, so they are also transient-shaped).
REFUSAL_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.InvalidAuthorizationSpecificationError,  # wrong password, no such role, pg_hba
    asyncpg.InvalidCatalogNameError,  # no such database
    asyncpg.InsufficientPrivilegeError,  # no CONNECT on the database
    redis_errors.AuthenticationError,  # WRONGPASS, NOAUTH, "invalid password"
    redis_errors.AuthorizationError,
    redis_errors.NoPermissionError,  # NOPERM: the ACL user may not do this
    # An S3 4xx (5xx is ServerError): AccessDenied, InvalidAccessKeyId, SignatureDoesNotMatch,
    # or a region or endpoint the server does not serve.
    S3Error,
)
_NOAUTH = re.compile(r"(?i)authentication required|with the client already authenticated")
_PROBE_TIMEOUT_S = 3.0


def refusal(exc: BaseException) -> str | None:
    """Why the service refused us for good (`password authentication failed for user "x"`), or
    None when `exc` is something a retry may get past."""
    if isinstance(exc, S3Error):
        return f"{exc.code}: {exc.message}"
    if isinstance(exc, redis_errors.AuthenticationError) and _NOAUTH.search(str(exc)):
        # Redis 7 answers a client without a password with a HELLO-specific NOAUTH text.
        return "the server requires a password, and the URL gives none (NOAUTH)"
    if isinstance(exc, REFUSAL_ERRORS):
        return str(exc) or type(exc).__name__
    return None


class Need(enum.Enum):
    KAFKA = "kafka"
    POSTGRES = "postgres"
    REDIS = "redis"
    S3 = "s3"
    HTTP = "http"
    # The sending accounts and Meta apps, kept current (accounts/directory.py); implies POSTGRES.
    ACCOUNTS = "accounts"


@frozen
class Resources:
    settings: Settings
    metrics: Metrics
    producer: Producer | None = None
    pg: asyncpg.Pool | None = None
    redis: aioredis.Redis | None = None
    s3: Minio | None = None
    http: HttpClient | None = None
    # Owns the tasks that serve many callers at once (batches: background.py).
    background: Background | None = None
    pipeline: AutoPipeline | None = None
    directory: AccountDirectory | None = None
    # The last probe's problem per dependency (None: it answered), so a change is logged once.
    probe_problems: dict[str, str | None] = field(default_factory=dict, compare=False)

    # Accessors for roles: a role that declared a need gets the resource, or it is a bug.
    def kafka(self) -> Producer:
        return _present(self.producer, Need.KAFKA)

    def postgres(self) -> asyncpg.Pool:
        return _present(self.pg, Need.POSTGRES)

    def redis_client(self) -> aioredis.Redis:
        return _present(self.redis, Need.REDIS)

    def s3_client(self) -> Minio:
        return _present(self.s3, Need.S3)

    def http_client(self) -> HttpClient:
        return _present(self.http, Need.HTTP)

    def accounts(self) -> AccountDirectory:
        """Every sending account and Meta app, kept current while the process runs."""
        return _present(self.directory, Need.ACCOUNTS)

    def redis_pipeline(self) -> AutoPipeline:
        """The process's one auto-pipeline: Redis commands of one loop iteration, in one
        round trip (autopipeline.py), whichever role issued them."""
        return _present(self.pipeline, Need.REDIS)

    def spawn(self) -> Spawn:
        """What batches are sent in (background.py)."""
        if self.background is None:
            raise RuntimeError("resources not opened: no background owner")
        return self.background.spawn

    def redis_key(self, key: str) -> str:
        """Every Redis key and channel goes through here, so a prefix isolates a deployment."""
        return f"{self.settings.redis.key_prefix}{key}"

    async def probe(self) -> dict[str, bool]:
        """Whether each opened dependency answers now (for /readyz). A dependency that stops
        answering is logged once, at WARNING, with the reason; its recovery at INFO."""
        checks: dict[str, Callable[[], Awaitable[object]]] = {}
        if self.producer is not None:
            checks["kafka"] = self._probe_kafka
        if self.pg is not None:
            checks["postgres"] = lambda: _present(self.pg, Need.POSTGRES).fetchval("SELECT 1")
        if self.redis is not None:
            checks["redis"] = _present(self.redis, Need.REDIS).ping
        if self.s3 is not None:
            checks["s3"] = self._probe_s3
        names = list(checks)
        problems = await asyncio.gather(*(_problem_of(checks[n]) for n in names))
        for name, problem in zip(names, problems, strict=True):
            self._note(name, problem)
        return {name: problem is None for name, problem in zip(names, problems, strict=True)}

    def _note(self, name: str, problem: str | None) -> None:
        """Log a change: the first failing probe (not every one: /readyz is polled), and the
        first that answers again."""
        was_failing = self.probe_problems.get(name) is not None
        self.probe_problems[name] = problem
        fields = {"fields": {"dependency": name}}
        if problem is not None and not was_failing:
            log.warning("%s: not ready: %s", name, problem, extra=fields)
        elif problem is None and was_failing:
            log.info("%s: answers again", name, extra=fields)

    async def _probe_kafka(self) -> bool:
        if not await self.kafka().probe():
            raise ConnectionError("kafka metadata request failed")
        return True

    async def _probe_s3(self) -> None:
        await _bucket_exists(self.s3_client(), self.settings.s3.bucket)


async def _bucket_exists(s3: Minio, bucket: str) -> None:
    """Credentials accepted and the bucket there; ConnectionError while it is not (yet)."""
    if not await s3.bucket_exists(bucket):
        raise ConnectionError(f"bucket {bucket!r} does not exist")


async def _problem_of(check: Callable[[], Awaitable[object]]) -> str | None:
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT_S):
            await check()
    except TimeoutError:
        return f"no answer within {_PROBE_TIMEOUT_S:.0f}s"
    except Exception as exc:  # noqa: BLE001 - whatever a probe raises, the dependency is not usable
        return refusal(exc) or f"{type(exc).__name__}: {exc}"
    return None


def _present(value: T | None, need: Need) -> T:
    if value is None:
        raise RuntimeError(
            f"resource {need.value!r} was not opened: declare it in the role's needs"
        )
    return value


@contextlib.asynccontextmanager
async def open_resources(
    settings: Settings,
    metrics: Metrics,
    needs: frozenset[Need],
    *,
    connect_timeout_s: float = 60.0,
    shutdown: ShutdownDeadline | None = None,
) -> AsyncIterator[Resources]:
    """Open what `needs` asks for, waiting (with backoff, up to `connect_timeout_s`) for
    dependencies that are still starting, and close everything in reverse order on exit, by
    `shutdown`'s end when it has begun (a close that would take longer is cut short)."""
    deadline = shutdown or ShutdownDeadline(settings.supervisor.shutdown_timeout_s)
    async with contextlib.AsyncExitStack() as stack:
        opener = _Opener(settings, metrics, stack, deadline, connect_timeout_s)
        redis_client = await opener.redis() if Need.REDIS in needs else None
        needs_pg = Need.POSTGRES in needs or Need.ACCOUNTS in needs
        pg = await opener.postgres() if needs_pg else None
        directory = await opener.accounts() if Need.ACCOUNTS in needs else None
        producer = await opener.kafka(redis_client) if Need.KAFKA in needs else None
        s3 = await opener.s3() if Need.S3 in needs else None
        # No connection cap of its own: kafka.max_in_flight already bounds concurrent sends
        # (aiohttp's hidden default of 100 once capped the router at 100 / provider latency
        # sends/s, whatever max_in_flight said).
        http = await stack.enter_async_context(HttpClient()) if Need.HTTP in needs else None
        # Opened last, so it closes first: batches under way finish while the clients (and the
        # pipeline's connection) are open.
        background = Background(shutdown=deadline)
        pipeline = (
            None if redis_client is None else AutoPipeline(redis_client, spawn=background.spawn)
        )
        if pipeline is not None:
            stack.callback(pipeline.close)
        await stack.enter_async_context(background)
        yield Resources(
            settings,
            metrics,
            producer,
            pg,
            redis_client,
            s3,
            http,
            background,
            pipeline,
            directory=directory,
        )


@frozen
class _Opener:
    """Opens one resource at a time onto the exit stack, each closed by the deadline's end."""

    settings: Settings
    metrics: Metrics
    stack: contextlib.AsyncExitStack
    deadline: ShutdownDeadline
    connect_timeout_s: float

    async def redis(self) -> aioredis.Redis:
        # A blocking pool: above max_connections a command waits for a free connection (the
        # plain pool raises MaxConnectionsError at once, crashing busy roles).
        settings = self.settings.redis
        client = aioredis.Redis.from_pool(
            aioredis.BlockingConnectionPool.from_url(
                settings.url.get(), max_connections=settings.max_connections
            )
        )
        self.stack.push_async_callback(_close_within, "redis", client.aclose, self.deadline)
        await _connect("redis", client.ping, self.connect_timeout_s)
        return client

    async def postgres(self) -> asyncpg.Pool:
        settings = self.settings.postgres
        pool = await _connect(
            "postgres",
            lambda: asyncpg.create_pool(
                settings.url.get(),
                min_size=settings.pool_min_size,
                max_size=settings.pool_max_size,
                command_timeout=settings.command_timeout_s,
            ),
            self.connect_timeout_s,
        )
        self.stack.push_async_callback(_close_pool, pool, self.deadline)
        return pool

    async def accounts(self) -> AccountDirectory:
        """The directory, once its database answers (retried like the pool: the listener is a
        connection of its own); a missing table or a bad accounts key is final."""
        directory = AccountDirectory(self.settings)
        return await _connect(
            "postgres", partial(self.stack.enter_async_context, directory), self.connect_timeout_s
        )

    async def kafka(self, redis_client: aioredis.Redis | None) -> Producer:
        """The producer; with Redis, records are parked in the fallback list while the breaker
        is open."""
        settings, metrics = self.settings, self.metrics

        async def start_producer() -> Producer:
            # A fresh client per attempt: aiokafka cannot restart one whose start failed.
            candidate = Producer(
                settings.kafka,
                settings.breaker,
                on_breaker_change=lambda state: _breaker_gauge(metrics, state),
            )
            try:
                await candidate.start()
            except BaseException:
                await candidate.stop()
                raise
            return candidate

        producer = await _connect("kafka", start_producer, self.connect_timeout_s)
        _breaker_gauge(metrics, BreakerState.CLOSED)
        self.stack.push_async_callback(_stop_producer, producer, self.deadline)
        if redis_client is not None:
            queue = f"{settings.redis.key_prefix}{settings.fallback.queue_key}"
            client = redis_client

            async def park(envelope: bytes) -> None:
                await client.rpush(queue, envelope)

            producer.fallback_sink = park
        return producer

    async def s3(self) -> Minio:
        client = new_client(self.settings.s3)
        self.stack.push_async_callback(_close_within, "s3", client.close_session, self.deadline)
        bucket = self.settings.s3.bucket
        await _connect("s3", partial(_bucket_exists, client, bucket), self.connect_timeout_s)
        return client


async def _close_within(
    name: str, close: Callable[[], Awaitable[object]], deadline: ShutdownDeadline
) -> None:
    try:
        async with timeout_at(deadline.end()):
            await close()
    except TimeoutError:
        log.warning("%s: not closed by the shutdown deadline; leaving it", name)


async def _close_pool(pool: asyncpg.Pool, deadline: ShutdownDeadline) -> None:
    """A graceful close waits for every connection to be released; at the deadline the rest
    are terminated."""
    try:
        async with timeout_at(deadline.end()):
            await pool.close()
    except TimeoutError:
        log.warning("postgres: pool not closed by the shutdown deadline; terminating it")
        pool.terminate()


async def _stop_producer(producer: Producer, deadline: ShutdownDeadline) -> None:
    # Whatever it still holds belongs to callers that gave up: the pools after it get the rest.
    await producer.stop(until=deadline.flush_end())


def _breaker_gauge(metrics: Metrics, state: BreakerState) -> None:
    metrics.breaker_state.set({"service": "kafka"}, int(state))


async def _connect(name: str, attempt: Callable[[], Awaitable[T]], timeout_s: float) -> T:
    """Retry a connection while the dependency is starting; the last error names it. A refusal
    (wrong password, no such database) is final: DependencyRefusedError at once."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    tries = 0
    while True:
        try:
            return await attempt()
        except (*TRANSIENT_ERRORS, *REFUSAL_ERRORS) as exc:
            reason = refusal(exc)
            if reason is not None:
                raise DependencyRefusedError(name, reason) from None
            if not isinstance(exc, TRANSIENT_ERRORS):
                raise
            error: Exception = exc
        if loop.time() >= deadline:
            raise ConnectionError(
                f"{name} is unreachable after {timeout_s:.0f}s: {error}"
            ) from error
        delay = backoff_delay_s(tries, base_s=0.2, cap_s=5.0)
        tries += 1
        log.warning("waiting for %s (%s); retrying in %.1fs", name, error, delay)
        await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
