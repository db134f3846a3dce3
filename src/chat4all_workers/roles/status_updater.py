"""The status updater: applies `message_status_updates` to `messages` and its history.

Every valid update appends one `message_status_history` row per (message, channel, status)
(ON CONFLICT DO NOTHING, so a redelivered update changes nothing and announces nothing twice),
then moves `messages.status` forward, never backwards, under a row lock:

- `messages.status` is the highest status reached on ANY channel, in the order
  ACCEPTED < PROCESSING < SENT < DELIVERED < READ. A late SENT after DELIVERED is history only.
- FAILED is set only when EVERY channel of the message (its `channels` column; the update's own
  channel when that list is empty) has reported FAILED: one failed channel of two leaves the
  status at what the other reached. FAILED is terminal: nothing moves the message after it.
- An update for a message that has no row yet is recorded in the history only, with a warning
  (the row may be written later by the API; the history keeps the evidence). It is not
  dead-lettered: the update is valid, only our view of the message is incomplete. The warning
  is one condition (the message, status and channel are its fields), so a stream of them is
  one line per `observability.log_repeat_interval_s` with the count.

After the commit, a new history row is announced on the Redis channel `conversation:{id}` as
`{"type": "MessageStatusUpdated", ...}` (best effort: pub/sub has no delivery guarantee anyway).
A record that violates the wire format is dead-lettered (`dlq.source=status_updater`).
"""

from __future__ import annotations

import logging

import asyncpg
import orjson
import redis.exceptions as redis_errors

from chat4all_workers.consuming import consume
from chat4all_workers.db import statuses as db
from chat4all_workers.errors import InvalidRecordError
from chat4all_workers.formats.status_update import FAILED, PROGRESS, StatusUpdate, parse_update
from chat4all_workers.kafka.records import ConsumedRecord
from chat4all_workers.observability.logging import log_context
from chat4all_workers.resources import Need
from chat4all_workers.role import RoleContext, RoleSpec

log = logging.getLogger(__name__)

# The update's own values are what PostgreSQL refuses (a NUL in text or jsonb, a timestamp
# outside its range, a channel too long for the history index): no retry can store them.
_UNSTORABLE_ERRORS = (asyncpg.DataError, asyncpg.ProgramLimitExceededError)


def next_status(current: str, update: str, *, every_channel_failed: bool) -> str:
    """The message's status after an update (the rule of the module docstring)."""
    if current == FAILED:
        return FAILED
    if update == FAILED:
        return FAILED if every_channel_failed else current
    rank = PROGRESS.index(current) if current in PROGRESS else -1
    return update if PROGRESS.index(update) > rank else current


class _Updater:
    def __init__(self, ctx: RoleContext) -> None:
        self.ctx = ctx
        self.pool: asyncpg.Pool = ctx.resources.postgres()

    async def handle(self, record: ConsumedRecord) -> None:
        update = parse_update(record.value)
        with log_context(message_id=str(update.message_id), conversation_id=update.conversation_id):
            try:
                new, overall = await self._apply(update)
            except _UNSTORABLE_ERRORS as exc:
                raise InvalidRecordError(f"postgres cannot store this update: {exc}") from None
            outcome = "applied" if new else "duplicate"
            if new and overall is None:
                outcome = "unknown_message"
            self.ctx.metrics.messages_processed.inc(
                {"role": self.ctx.name, "channel": update.channel, "outcome": outcome}
            )
            if new:
                await self._announce(update, overall)

    async def _apply(self, update: StatusUpdate) -> tuple[bool, str | None]:
        """(history row is new, the message's status now or None when it has no row)."""
        async with self.pool.acquire() as conn, conn.transaction():
            message = await db.lock_message(conn, update.message_id)
            new = await db.record_history(
                conn,
                message_id=update.message_id,
                channel=update.channel,
                status=update.status,
                details=update.details,
                at=update.at,
            )
            if message is None:
                # One condition, whatever the message or status (they are fields): repeated, it
                # is one line per observability.log_repeat_interval_s with the count.
                log.warning(
                    "status for unknown message recorded in history only (no messages row)",
                    extra={
                        "fields": {
                            "message_id": str(update.message_id),
                            "status": update.status,
                            "channel": update.channel,
                        }
                    },
                )
                return new, None
            every_failed = False
            if update.status == FAILED:
                channels = set(message.channels) - {"all"} or {update.channel}
                every_failed = channels <= await db.failed_channels(conn, update.message_id)
            status = next_status(message.status, update.status, every_channel_failed=every_failed)
            if status != message.status:
                await db.set_status(conn, update.message_id, status)
            return new, status

    async def _announce(self, update: StatusUpdate, overall: str | None) -> None:
        resources = self.ctx.resources
        note = {
            "type": "MessageStatusUpdated",
            "message_id": str(update.message_id),
            "conversation_id": update.conversation_id,
            "channel": update.channel,
            "status": update.status,
            "message_status": overall,
            "timestamp": update.at.isoformat(),
            "details": update.details,
        }
        channel = resources.redis_key(f"conversation:{update.conversation_id}")
        try:
            await resources.redis_client().publish(channel, orjson.dumps(note))
        except (redis_errors.RedisError, OSError) as exc:
            log.warning("could not announce status of %s: %s", update.message_id, exc)


async def run(ctx: RoleContext) -> None:
    updater = _Updater(ctx)
    await consume(ctx, topic=ctx.settings.topics.message_status_updates, handler=updater.handle)


ROLE = RoleSpec(
    name="status_updater",
    needs=frozenset({Need.KAFKA, Need.POSTGRES, Need.REDIS}),
    run=run,
)
