"""`dlq replay` sends dead letters home once, byte for byte, without their dlq.* headers."""

from __future__ import annotations

import pytest

from chat4all_workers.kafka.dlq import dead_letter
from chat4all_workers.kafka.producer import Producer
from chat4all_workers.kafka.replay import ReplayFilter, replay_dlq
from harness.deployment import Deployment
from harness.topics import read_topic

pytestmark = pytest.mark.stack


async def dead_letter_some(
    deployment: Deployment, reasons: list[str], *, same_key: bool = False
) -> None:
    settings = deployment.settings()
    producer = Producer(settings.kafka, settings.breaker)
    await producer.start()
    try:
        for n, reason in enumerate(reasons):
            await dead_letter(
                producer,
                dlq_topic=settings.topics.dlq,
                value=b'{"n": %d}' % n,
                key=b"conversation:%d" % (0 if same_key else n),
                source="router",
                reason=reason,
                error_type="provider_rejected",
                attempts=3,
                original_topic=settings.topics.message_processing,
                original_partition=0,
                original_offset=n,
                metrics=None,
            )
    finally:
        await producer.stop()


async def test_replay_republishes_to_the_original_topic_without_dlq_headers(
    deployment: Deployment,
) -> None:
    await dead_letter_some(deployment, ["recipient invalid", "recipient invalid"])
    settings = deployment.settings()

    summary = await replay_dlq(settings, filters=ReplayFilter(), dry_run=False)

    records = await read_topic(deployment.stack, settings.topics.message_processing)
    assert summary.replayed == 2
    assert sorted((r.key, r.value) for r in records) == [
        (b"conversation:0", b'{"n": 0}'),
        (b"conversation:1", b'{"n": 1}'),
    ]
    assert all(not k.startswith("dlq.") for r in records for k, _ in r.headers)


async def test_replay_is_not_repeated_by_a_second_run(deployment: Deployment) -> None:
    await dead_letter_some(deployment, ["timeout"])
    settings = deployment.settings()
    await replay_dlq(settings, filters=ReplayFilter(), dry_run=False)

    second = await replay_dlq(settings, filters=ReplayFilter(), dry_run=False)

    assert second.replayed == 0
    assert len(await read_topic(deployment.stack, settings.topics.message_processing)) == 1


async def test_replay_filters_by_reason_and_leaves_the_rest_for_later(
    deployment: Deployment,
) -> None:
    # One key, so one partition: the order of the three is the order they were dead-lettered.
    await dead_letter_some(
        deployment, ["provider down", "bad recipient", "provider down"], same_key=True
    )
    settings = deployment.settings()

    first = await replay_dlq(settings, filters=ReplayFilter(reason="PROVIDER"), dry_run=False)
    later = await replay_dlq(settings, filters=ReplayFilter(), dry_run=False)

    assert (first.replayed, first.skipped) == (2, 1)
    assert later.replayed == 2  # the skipped one, and the one after the gap (absorbed by dedup)


async def test_replay_dry_run_changes_nothing(deployment: Deployment) -> None:
    await dead_letter_some(deployment, ["x"])
    settings = deployment.settings()

    dry = await replay_dlq(settings, filters=ReplayFilter(), dry_run=True)
    real = await replay_dlq(settings, filters=ReplayFilter(limit=5), dry_run=False)

    assert (dry.replayed, real.replayed) == (1, 1)
