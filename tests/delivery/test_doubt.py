"""Sends in doubt (delivery/doubt.py), against real Redis and Kafka: the send waits for the
provider's word in its marker (written here as the webhooks role writes it); found, it is SENT;
silent for `router.in_doubt_window_s`, it is sent again, dead-lettered, or given up on its last
attempt; every resolution counted in `router_in_doubt_total`.

The doubt comes from the real adapter: the scripted provider answers 200 without a message id,
so the request reached it and what it did is unknown."""

from __future__ import annotations

import asyncio
import time

import pytest

from chat4all_workers.delivery.doubt import RESOLUTIONS
from chat4all_workers.delivery.failures import UnknownOutcomeError
from chat4all_workers.delivery.lease import Lease
from chat4all_workers.delivery.markers import Kind
from chat4all_workers.delivery.send import Send, Verdict
from chat4all_workers.errors import RetryableError, TransientProviderError
from tests.delivery.conftest import ORIGIN, Rig, RigFactory
from tests.support import Answer

pytestmark = [pytest.mark.stack, pytest.mark.timeout(60)]

NO_MESSAGE_ID: Answer = (200, {"messaging_product": "whatsapp", "messages": []}, {})


async def sent_in_doubt(rig: Rig) -> tuple[Send, Lease, TransientProviderError]:
    """A send whose one request reached the provider without a verdict: its lease, in doubt."""
    send = rig.send()
    lease = await rig.claim(send)
    with pytest.raises(TransientProviderError) as error:
        await rig.adapter.send(send.outbound)
    assert error.value.in_doubt
    lease.in_doubt = True
    return send, lease, error.value


async def test_doubts_count_every_resolution_from_zero(delivery: RigFactory) -> None:
    rig = await delivery()

    counts = {resolution: rig.in_doubt(resolution) for resolution in RESOLUTIONS}

    assert counts == dict.fromkeys(RESOLUTIONS, 0)


async def test_doubts_settle_confirms_the_send_when_its_marker_turns_sent(
    delivery: RigFactory,
) -> None:
    rig = await delivery(answers=[NO_MESSAGE_ID], in_doubt_window_s=30.0)
    send, lease, error = await sent_in_doubt(rig)
    began = time.monotonic()
    settling = asyncio.ensure_future(
        rig.doubts.settle(send, lease, attempts=1, cause=str(error), error=error)
    )

    await rig.provider_word(send.key, "wamid.W")
    verdict = await asyncio.wait_for(settling, 10)

    (update,) = await rig.statuses()
    assert verdict is Verdict.SENT
    assert time.monotonic() - began < 10  # polled, not the window waited out
    assert (update.status, update.details) == ("SENT", {"provider_message_id": "wamid.W"})
    assert lease.settled
    assert rig.in_doubt("confirmed") == 1
    assert len(rig.api.requests) == 1  # not sent again


async def test_doubts_settle_sends_again_after_a_silent_window(delivery: RigFactory) -> None:
    rig = await delivery(answers=[NO_MESSAGE_ID], in_doubt_window_s=0.1)
    send, lease, error = await sent_in_doubt(rig)

    verdict = await rig.doubts.settle(send, lease, attempts=1, cause=str(error), error=error)

    assert verdict is None  # the caller sends it again
    assert lease.in_doubt is False
    assert (await rig.marker(send)).value == lease.value  # still ours, for the next attempt
    assert await rig.statuses() == []
    assert rig.in_doubt("resent") == 1


async def test_doubts_settle_dead_letters_a_silent_send_in_dead_letter_mode(
    delivery: RigFactory,
) -> None:
    rig = await delivery(
        answers=[NO_MESSAGE_ID], in_doubt_window_s=0.1, on_unknown_outcome="dead_letter"
    )
    send, lease, error = await sent_in_doubt(rig)

    verdict = await rig.doubts.settle(send, lease, attempts=1, cause="timed out", error=error)

    (update,) = await rig.statuses()
    (failure,) = send.failures
    assert verdict is Verdict.OTHER
    assert isinstance(failure.error, UnknownOutcomeError)
    assert update.status == "FAILED"
    assert update.details["reason"] == (
        "timed out, and no word from the provider within router.in_doubt_window_s (0.1s)"
    )
    assert (await rig.marker(send)).value == f"failed:delivery_unknown:{ORIGIN}"
    assert rig.in_doubt("dead_lettered") == 1


async def test_doubts_settle_gives_up_a_silent_send_on_its_last_attempt(
    delivery: RigFactory,
) -> None:
    rig = await delivery(answers=[NO_MESSAGE_ID], in_doubt_window_s=0.1, max_attempts=3)
    send, lease, error = await sent_in_doubt(rig)

    verdict = await rig.doubts.settle(send, lease, attempts=3, cause=str(error), error=error)

    (update,) = await rig.statuses()
    assert verdict is Verdict.OTHER
    assert (update.status, update.details["attempts"]) == ("FAILED", 3)
    assert (await rig.marker(send)).value == f"failed:retries_exhausted:{ORIGIN}"
    assert rig.in_doubt("exhausted") == 1


async def test_doubts_settle_of_an_orphan_sends_it_again_whatever_the_attempts(
    delivery: RigFactory,
) -> None:
    rig = await delivery(in_doubt_window_s=0.1, max_attempts=1)
    send = rig.send()
    lease = await rig.claim(send)  # as if taken over from a worker that died mid-send
    lease.in_doubt = True

    verdict = await rig.doubts.settle(send, lease, attempts=0, cause="orphaned", error=None)

    assert verdict is None  # its own attempt is still to come
    assert rig.in_doubt("resent") == 1


async def test_doubts_settle_hands_the_record_back_when_the_process_stops(
    delivery: RigFactory,
) -> None:
    rig = await delivery(answers=[NO_MESSAGE_ID], in_doubt_window_s=30.0)
    send, lease, error = await sent_in_doubt(rig)
    settling = asyncio.ensure_future(
        rig.doubts.settle(send, lease, attempts=1, cause=str(error), error=error)
    )

    rig.ctx.stopping.set()

    with pytest.raises(RetryableError, match="handing the record back"):
        await asyncio.wait_for(settling, 5)
    assert lease.in_doubt  # still in doubt: settled on the way out by the router


async def test_doubts_settle_hands_the_record_back_when_the_lease_changes_hands(
    delivery: RigFactory,
) -> None:
    rig = await delivery(answers=[NO_MESSAGE_ID], in_doubt_window_s=30.0)
    send, lease, error = await sent_in_doubt(rig)
    await rig.redis.set(send.key, "lease:another:0", keepttl=True)

    with pytest.raises(RetryableError, match="changed hands"):
        await rig.doubts.settle(send, lease, attempts=1, cause=str(error), error=error)
    assert lease.settled  # not ours to settle any more


async def test_doubts_settle_keeps_the_lease_alive_while_it_waits(delivery: RigFactory) -> None:
    rig = await delivery(answers=[NO_MESSAGE_ID], in_doubt_window_s=0.5, lease_s=0.3)
    send, lease, error = await sent_in_doubt(rig)
    claimed = await rig.marker(send)

    await rig.doubts.settle(send, lease, attempts=1, cause=str(error), error=error)

    renewed = await rig.marker(send)
    assert renewed.kind is Kind.LEASE
    assert renewed.value == lease.value
    assert renewed.deadline > claimed.deadline + 0.2  # renewed every lease_s / 3
