"""What comes out of a send (delivery/outcomes.py), against real Kafka and Redis: its SENT or
FAILED status update, its end in the marker when it is given up on, and the counters."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from chat4all_workers.delivery.failures import ChannelFailure
from chat4all_workers.delivery.markers import Kind
from chat4all_workers.delivery.send import Verdict
from chat4all_workers.errors import (
    ProviderRejectedError,
    ThrottleDeadlineError,
    TransientProviderError,
)
from harness.topics import read_topic
from tests.delivery.conftest import ORIGIN, RigFactory

pytestmark = [pytest.mark.stack, pytest.mark.timeout(60)]

REJECTED = ProviderRejectedError(
    "HTTP 400 (131026): Message undeliverable", provider_code=131026, fbtrace_id="T"
)


async def test_outcomes_sent_emits_sent_with_the_providers_id_keyed_by_conversation(
    delivery: RigFactory,
) -> None:
    rig = await delivery()
    send = rig.send(conversation=42)

    await rig.outcomes.sent(send, "wamid.1")

    (record,) = await read_topic(rig.stack, rig.status_topic)
    (update,) = await rig.statuses()
    assert record.key == b"conversation:42"
    assert (str(update.message_id), update.conversation_id) == (send.message.message_id, 42)
    assert (update.channel, update.status) == ("whatsapp", "SENT")
    assert update.details == {"provider_message_id": "wamid.1"}
    assert rig.processed("sent") == 1


async def test_outcomes_sent_while_kafkas_breaker_is_open_is_parked_in_the_fallback_list(
    delivery: RigFactory,
) -> None:
    """The statuses go with the others of their loop iteration in one call; refused by the
    open breaker, nothing was handed to Kafka, so each is parked in Redis for the backfill."""
    rig = await delivery()
    sends = [rig.send(conversation=n) for n in (41, 42)]
    breaker = rig.ctx.resources.kafka().breaker
    breaker.record_failure(count=breaker.failure_threshold)

    await asyncio.gather(*(rig.outcomes.sent(s, f"wamid.{n}") for n, s in enumerate(sends)))

    queue = rig.ctx.resources.redis_key(rig.ctx.settings.fallback.queue_key)
    parked = [orjson.loads(e) for e in await rig.redis.lrange(queue, 0, -1)]
    assert await read_topic(rig.stack, rig.status_topic) == []
    assert [(e["topic"], e["key"]) for e in parked] == [
        (rig.status_topic, "conversation:41"),
        (rig.status_topic, "conversation:42"),
    ]
    assert [e["value"]["new_status"] for e in parked] == ["SENT", "SENT"]
    assert [e["value"]["message_id"] for e in parked] == [s.message.message_id for s in sends]
    assert rig.processed("sent") == 2


async def test_outcomes_sent_of_a_redelivery_counts_a_duplicate(delivery: RigFactory) -> None:
    rig = await delivery()
    send = rig.send()

    await rig.outcomes.sent(send, None, outcome="duplicate", dedup_marker="foreign")

    (update,) = await rig.statuses()
    assert update.details == {"provider_message_id": None, "dedup_marker": "foreign"}
    assert rig.processed("duplicate") == 1


async def test_outcomes_failed_emits_failed_and_keeps_the_failure_for_the_dead_letter(
    delivery: RigFactory,
) -> None:
    rig = await delivery()
    send = rig.send()
    failure = ChannelFailure("whatsapp", REJECTED, 1)
    failures: list[ChannelFailure] = []

    await rig.outcomes.failed(send.message, failure, failures)

    (update,) = await rig.statuses()
    assert failures == [failure]
    assert (update.status, update.details) == ("FAILED", failure.details())
    assert rig.processed("failed") == 1


async def test_outcomes_fail_records_the_failure_on_the_sends_record(delivery: RigFactory) -> None:
    rig = await delivery()
    send = rig.send()

    await rig.outcomes.fail(send, REJECTED, 2)

    assert send.failures == [ChannelFailure("whatsapp", REJECTED, 2)]


async def test_outcomes_give_up_marks_the_send_given_up_and_emits_failed(
    delivery: RigFactory,
) -> None:
    rig = await delivery()
    send = rig.send()
    lease = await rig.claim(send)

    verdict = await rig.outcomes.give_up(send, lease, REJECTED, 1)

    (update,) = await rig.statuses()
    assert verdict is Verdict.OTHER
    assert (await rig.marker(send)).value == f"failed:provider_rejected:{ORIGIN}"
    assert update.status == "FAILED"
    assert update.details == {
        "reason": "HTTP 400 (131026): Message undeliverable",
        "attempts": 1,
        "provider_code": 131026,
        "error_class": "rejected",
    }


async def test_outcomes_give_up_after_the_providers_word_emits_sent_instead(
    delivery: RigFactory,
) -> None:
    rig = await delivery()
    send = rig.send()
    lease = await rig.claim(send)
    await rig.provider_word(send.key, "wamid.W")

    verdict = await rig.outcomes.give_up(send, lease, REJECTED, 1)

    (update,) = await rig.statuses()
    assert verdict is Verdict.SENT
    assert (update.status, update.details) == ("SENT", {"provider_message_id": "wamid.W"})
    assert send.failures == []
    assert rig.processed("sent") == 1


async def test_outcomes_give_up_of_a_retryable_error_is_retries_exhausted(
    delivery: RigFactory,
) -> None:
    rig = await delivery()
    send = rig.send()
    lease = await rig.claim(send)

    await rig.outcomes.give_up(send, lease, TransientProviderError("HTTP 503: busy"), 3)

    marker = await rig.marker(send)
    assert (marker.kind, marker.error_type, marker.origin) == (
        Kind.FAILED,
        "retries_exhausted",
        ORIGIN,
    )


async def test_outcomes_give_up_without_a_lease_marks_the_sends_own_key(
    delivery: RigFactory,
) -> None:
    rig = await delivery()
    send = rig.send()  # its lease was released when it was throttled

    await rig.outcomes.give_up(send, None, ThrottleDeadlineError("still throttled"), 4)

    (update,) = await rig.statuses()
    assert (await rig.marker(send)).value == f"failed:throttle_deadline:{ORIGIN}"
    assert update.details == {"reason": "still throttled", "attempts": 4}


async def test_outcomes_request_counts_each_answer_of_the_provider(delivery: RigFactory) -> None:
    rig = await delivery()
    send = rig.send()

    rig.outcomes.request(send, "throttled")
    rig.outcomes.request(send, "throttled")
    rig.outcomes.request(send, "sent")

    assert (rig.requests("throttled"), rig.requests("sent")) == (2, 1)
