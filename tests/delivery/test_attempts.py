"""The attempts of one claimed send (delivery/attempts.py): the real adapter calls a scripted
provider on loopback HTTP, and its answers decide: accepted (marked sent, SENT), transient
(retried up to `router.max_attempts`, then given up), in doubt (the provider's word awaited),
throttled or account (the lease released), rejected (FAILED at once).

Backoff waits are recorded, not slept; what happens "meanwhile" is done by the test."""

from __future__ import annotations

import asyncio

import pytest

from chat4all_workers.delivery.markers import Kind
from chat4all_workers.delivery.send import Verdict
from chat4all_workers.errors import AccountError, ThrottledError
from harness.waiting import eventually
from tests.delivery.conftest import ORIGIN, RigFactory
from tests.support import Answer, ScriptedApi

pytestmark = [pytest.mark.stack, pytest.mark.timeout(60)]

ACCEPTED = ScriptedApi.accepted("wamid.1")
# Failed, and not taken (an account in maintenance): retried at once, no provider word awaited.
UNAVAILABLE = ScriptedApi.meta_error(500, 131057)
NO_MESSAGE_ID: Answer = (200, {"messaging_product": "whatsapp", "messages": []}, {})


async def test_attempts_mark_an_accepted_send_sent(delivery: RigFactory) -> None:
    rig = await delivery(answers=[ACCEPTED])
    send = rig.send()
    lease = await rig.claim(send)

    verdict = await rig.attempts.run(send, lease, probe=False, orphaned=False)

    (update,) = await rig.statuses()
    assert verdict is Verdict.SENT
    assert await rig.redis.get(send.key) == b"sent:wamid.1"
    assert (update.status, update.details) == ("SENT", {"provider_message_id": "wamid.1"})
    assert (rig.requests("sent"), rig.waits.delays) == (1, [])
    assert rig.api.requests[0]["text"]["body"] == "hello"


async def test_attempts_retry_a_transient_failure_after_a_backoff(delivery: RigFactory) -> None:
    rig = await delivery(answers=[UNAVAILABLE, ACCEPTED], retry_base_s=0.01, retry_cap_s=0.05)
    send = rig.send()
    lease = await rig.claim(send)

    verdict = await rig.attempts.run(send, lease, probe=False, orphaned=False)

    (delay,) = rig.waits.delays
    assert verdict is Verdict.SENT
    assert len(rig.api.requests) == 2
    assert 0.0 <= delay <= 0.01  # the first retry's ceiling: retry_base_s
    assert rig.requests("transient") == 1


async def test_attempts_wait_a_transient_failures_retry_after_up_to_the_cap(
    delivery: RigFactory,
) -> None:
    slow_down = ScriptedApi.meta_error(500, 131057, retry_after="0.5")
    rig = await delivery(answers=[slow_down, ACCEPTED], retry_base_s=0.01, retry_cap_s=5.0)
    send = rig.send()

    await rig.attempts.run(send, await rig.claim(send), probe=False, orphaned=False)

    assert rig.waits.delays == [0.5]


async def test_attempts_give_up_a_transient_failure_after_max_attempts(
    delivery: RigFactory,
) -> None:
    rig = await delivery(answers=[UNAVAILABLE] * 3, max_attempts=3)
    send = rig.send()
    lease = await rig.claim(send)

    verdict = await rig.attempts.run(send, lease, probe=False, orphaned=False)

    (update,) = await rig.statuses()
    assert verdict is Verdict.OTHER
    assert len(rig.api.requests) == 3
    assert len(rig.waits.delays) == 2  # a backoff between attempts, none after the last
    assert (await rig.marker(send)).value == f"failed:retries_exhausted:{ORIGIN}"
    assert update.status == "FAILED"
    assert (update.details["attempts"], update.details["error_class"]) == (3, "transient")


async def test_attempts_an_in_doubt_failure_waits_for_the_providers_word(
    delivery: RigFactory,
) -> None:
    rig = await delivery(answers=[NO_MESSAGE_ID, ACCEPTED], in_doubt_window_s=30.0)
    send = rig.send()
    lease = await rig.claim(send)
    running = asyncio.ensure_future(rig.attempts.run(send, lease, probe=False, orphaned=False))
    await eventually(lambda: len(rig.api.requests) == 1, timeout_s=5, message="the request")

    await rig.provider_word(send.key, "wamid.W")
    verdict = await asyncio.wait_for(running, 10)

    (update,) = await rig.statuses()
    assert verdict is Verdict.SENT
    assert len(rig.api.requests) == 1  # not sent a second time
    assert update.details == {"provider_message_id": "wamid.W"}
    assert rig.in_doubt("confirmed") == 1


async def test_attempts_an_in_doubt_failure_the_provider_is_silent_about_is_sent_again(
    delivery: RigFactory,
) -> None:
    rig = await delivery(answers=[NO_MESSAGE_ID, ACCEPTED], in_doubt_window_s=0.1)
    send = rig.send()

    verdict = await rig.attempts.run(send, await rig.claim(send), probe=False, orphaned=False)

    assert verdict is Verdict.SENT
    assert len(rig.api.requests) == 2
    assert rig.waits.delays == []  # the window was the wait
    assert rig.in_doubt("resent") == 1


async def test_attempts_an_orphaned_lease_waits_for_the_providers_word_before_sending(
    delivery: RigFactory,
) -> None:
    rig = await delivery(in_doubt_window_s=30.0)
    send = rig.send()
    lease = await rig.claim(send)
    lease.in_doubt = True
    await rig.provider_word(send.key, "wamid.EARLIER")

    verdict = await rig.attempts.run(send, lease, probe=False, orphaned=True)

    (update,) = await rig.statuses()
    assert verdict is Verdict.SENT
    assert rig.api.requests == []
    assert update.details == {"provider_message_id": "wamid.EARLIER"}


async def test_attempts_a_throttled_answer_releases_the_lease(delivery: RigFactory) -> None:
    rig = await delivery(answers=[ScriptedApi.meta_error(400, 130429)])
    send = rig.send()
    lease = await rig.claim(send)

    verdict = await rig.attempts.run(send, lease, probe=False, orphaned=False)

    assert verdict is Verdict.THROTTLED
    assert isinstance(send.last_error, ThrottledError)
    assert (await rig.marker(send)).kind is Kind.ABSENT  # the provider did not take it
    assert await rig.statuses() == []  # no attempt spent, nothing to say yet
    assert rig.requests("throttled") == 1


async def test_attempts_an_account_answer_releases_the_lease(delivery: RigFactory) -> None:
    rig = await delivery(answers=[ScriptedApi.meta_error(401, 190)])
    send = rig.send()
    lease = await rig.claim(send)

    verdict = await rig.attempts.run(send, lease, probe=False, orphaned=False)

    assert verdict is Verdict.ACCOUNT
    assert isinstance(send.last_error, AccountError)
    assert (await rig.marker(send)).kind is Kind.ABSENT
    assert await rig.statuses() == []
    assert rig.requests("paused") == 1


async def test_attempts_a_rejected_send_fails_at_once(delivery: RigFactory) -> None:
    rig = await delivery(answers=[ScriptedApi.meta_error(400, 131026)], max_attempts=3)
    send = rig.send()
    lease = await rig.claim(send)

    verdict = await rig.attempts.run(send, lease, probe=False, orphaned=False)

    (update,) = await rig.statuses()
    assert verdict is Verdict.REJECTED
    assert len(rig.api.requests) == 1
    assert (await rig.marker(send)).value == f"failed:provider_rejected:{ORIGIN}"
    assert (update.status, update.details["provider_code"]) == ("FAILED", 131026)


async def test_attempts_a_retry_finds_the_providers_word_came_meanwhile(
    delivery: RigFactory,
) -> None:
    rig = await delivery(answers=[UNAVAILABLE, ACCEPTED])
    send = rig.send()
    lease = await rig.claim(send)

    async def webhook_arrives() -> None:
        await rig.provider_word(send.key, "wamid.W")

    rig.waits.meanwhile = webhook_arrives

    verdict = await rig.attempts.run(send, lease, probe=False, orphaned=False)

    (update,) = await rig.statuses()
    assert verdict is Verdict.SENT
    assert len(rig.api.requests) == 1  # the 503 had reached it after all: not sent again
    assert update.details == {"provider_message_id": "wamid.W"}


async def test_attempts_a_retry_that_lost_its_lease_fails_the_channel(
    delivery: RigFactory,
) -> None:
    rig = await delivery(answers=[UNAVAILABLE, ACCEPTED])
    send = rig.send()
    lease = await rig.claim(send)

    async def another_worker_takes_it() -> None:
        await rig.redis.set(send.key, "lease:another:9999999999.000", keepttl=True)

    rig.waits.meanwhile = another_worker_takes_it

    verdict = await rig.attempts.run(send, lease, probe=False, orphaned=False)

    (update,) = await rig.statuses()
    assert verdict is Verdict.OTHER
    assert len(rig.api.requests) == 1
    assert update.status == "FAILED"
    assert update.details["reason"] == "lost the send lease to another worker"
    assert await rig.redis.get(send.key) == b"lease:another:9999999999.000"  # left alone


async def test_attempts_a_retry_of_a_send_its_channel_paused_meanwhile_is_held(
    delivery: RigFactory,
) -> None:
    rig = await delivery(answers=[UNAVAILABLE, ACCEPTED])
    send = rig.send()
    lease = await rig.claim(send)
    refused = AccountError("HTTP 401 (190): token expired", provider_code=190)

    async def the_channel_pauses() -> None:
        rig.lane.account_refused(refused, probe=False)

    rig.waits.meanwhile = the_channel_pauses

    verdict = await rig.attempts.run(send, lease, probe=False, orphaned=False)

    assert verdict is Verdict.HELD
    assert len(rig.api.requests) == 1
    assert (await rig.marker(send)).kind is Kind.ABSENT  # released: sent once the pause ends
