"""Channel lanes (delivery/lanes.py): a throttled answer slows the shared pace and waits, up to
`router.throttle_deadline_s`; an account-class answer pauses the channel; the probe's round
resumes it or not.

The answers come from the real adapter calling a scripted provider on loopback HTTP; the pace
is real (Redis); the lane's waits are recorded, not slept."""

from __future__ import annotations

import dataclasses
import logging
import re
import time

import pytest

from chat4all_workers.channels.pacing import PaceSettings
from chat4all_workers.config import WhatsAppSettings
from chat4all_workers.delivery.lanes import pace_settings
from chat4all_workers.delivery.send import Send, Verdict
from chat4all_workers.errors import (
    AccountError,
    ProviderRejectedError,
    ThrottleDeadlineError,
    ThrottledError,
)
from tests.delivery.conftest import Rig, RigFactory
from tests.support import ScriptedApi, metric_value

pytestmark = [pytest.mark.stack, pytest.mark.timeout(60)]

PACED = PaceSettings(max_rate_per_s=80.0, pair_burst=45, pair_interval_s=6.0, recovery_s=30.0)


async def throttled(rig: Rig) -> Send:
    """A send the provider just throttled (its `last_error`, as the attempts leave it)."""
    send = rig.send()
    with pytest.raises(ThrottledError) as error:
        await rig.adapter.send(send.outbound)
    send.last_error = error.value
    return send


async def account_refused(rig: Rig) -> AccountError:
    """An account-class answer of the provider (an expired token)."""
    with pytest.raises(AccountError) as error:
        await rig.adapter.send(rig.send().outbound)
    return error.value


def paused_gauge(rig: Rig, reason: str) -> float:
    labels = {"channel": rig.channel, "account": "default", "reason": reason}
    return metric_value(rig.ctx.metrics.channel_paused, labels)


# -- throttles ------------------------------------------------------------------------------------


async def test_lane_after_throttle_past_its_deadline_returns_throttle_deadline_error(
    delivery: RigFactory,
) -> None:
    rig = await delivery(
        answers=[ScriptedApi.meta_error(429, retry_after="7")], throttle_deadline_s=0.0
    )
    send = await throttled(rig)

    error = await rig.lane.after_throttle(send)

    assert isinstance(error, ThrottleDeadlineError)
    assert error.__cause__ is send.last_error
    assert "(router.throttle_deadline_s = 0): HTTP 429" in str(error)
    assert rig.waits.delays == []  # nothing waited for


async def test_lane_after_throttle_waits_the_providers_retry_after_whole(
    delivery: RigFactory,
) -> None:
    rig = await delivery(
        answers=[ScriptedApi.meta_error(400, 130429, retry_after="7")], retry_cap_s=0.05
    )
    send = await throttled(rig)

    error = await rig.lane.after_throttle(send)

    assert error is None  # the caller tries again
    assert rig.waits.delays == [7.0]  # above retry_cap_s: sending earlier earns another
    assert (send.throttles, send.throttled_since is not None) == (1, True)
    assert rig.lane.throttled_at is not None


async def test_lane_after_throttle_never_waits_past_the_deadline(delivery: RigFactory) -> None:
    rig = await delivery(
        answers=[ScriptedApi.meta_error(429, retry_after="100")], throttle_deadline_s=2.0
    )
    send = await throttled(rig)

    await rig.lane.after_throttle(send)

    (delay,) = rig.waits.delays
    assert 1.5 < delay <= 2.0


async def test_lane_after_throttle_slows_the_accounts_shared_pace(delivery: RigFactory) -> None:
    rig = await delivery(answers=[ScriptedApi.meta_error(400, 130429)], pace=PACED)
    send = await throttled(rig)

    await rig.lane.after_throttle(send)

    account_key = rig.ctx.resources.redis_key("pace:whatsapp:1000")
    assert float(await rig.redis.hget(account_key, "rate") or 0) == 40.0  # halved, in Redis


async def test_lane_after_throttle_says_once_when_the_throttles_are_not_the_rate(
    delivery: RigFactory, caplog: pytest.LogCaptureFixture
) -> None:
    fast = PaceSettings(max_rate_per_s=1000.0, pair_burst=0, pair_interval_s=0.0, recovery_s=30.0)
    rig = await delivery(answers=[ScriptedApi.meta_error(429)] * 3, pace=fast, pace_debounce_s=0)
    for n in range(5):
        await rig.lane.pacer.acquire(f"+{n}")
    await rig.lane.after_throttle(await throttled(rig))  # one in five: the rate halves
    for n in range(20):
        await rig.lane.pacer.acquire(f"+{n}")  # then two of 20 throttled: as before

    with caplog.at_level(logging.WARNING, logger="chat4all_workers.delivery.lanes"):
        await rig.lane.after_throttle(await throttled(rig))
        await rig.lane.after_throttle(await throttled(rig))

    held = [r.getMessage() for r in caplog.records if "not the rate" in r.getMessage()]
    assert len(held) == 1
    # Held at the rate the halving left (climbing back by a little since, on a slow machine).
    assert re.match(
        rf"{re.escape(rig.lane.name)}: throttles that are not the rate: rate held at 50\d\.\d/s",
        held[0],
    )


async def test_lane_after_a_pair_throttle_the_recipient_alone_waits(delivery: RigFactory) -> None:
    rig = await delivery(answers=[ScriptedApi.meta_error(400, 131056)], pace=PACED)
    send = await throttled(rig)

    await rig.lane.after_throttle(send)

    account_key = rig.ctx.resources.redis_key("pace:whatsapp:1000")
    assert await rig.redis.exists(rig.lane.pacer.pair_key(send.outbound.recipient)) == 1
    assert await rig.redis.hget(account_key, "rate") is None  # the account's pace untouched


async def test_lane_calm_forgets_the_throttling_once_quiet_for_the_recovery_period(
    delivery: RigFactory,
) -> None:
    rig = await delivery(answers=[ScriptedApi.meta_error(429)], pacing_recovery_s=0.0)
    await rig.lane.after_throttle(await throttled(rig))

    rig.lane.calm()

    assert rig.lane.throttled_at is None


async def test_lane_calm_remembers_a_recent_throttle(delivery: RigFactory) -> None:
    rig = await delivery(answers=[ScriptedApi.meta_error(429)], pacing_recovery_s=3600.0)
    await rig.lane.after_throttle(await throttled(rig))

    rig.lane.calm()

    assert rig.lane.throttled_at is not None


# -- pauses ---------------------------------------------------------------------------------------


async def test_lane_account_refused_pauses_the_channel_labelled_with_the_providers_code(
    delivery: RigFactory,
) -> None:
    rig = await delivery(answers=[ScriptedApi.meta_error(401, 190)])
    error = await account_refused(rig)

    rig.lane.account_refused(error, probe=False)

    assert rig.lane.pause.stats()["state"] == "paused"
    assert rig.lane.pause.stats()["reason"] == str(error)
    assert paused_gauge(rig, "190") == 1


async def test_lane_turn_of_an_active_channel_is_not_a_probe(delivery: RigFactory) -> None:
    rig = await delivery()

    assert await rig.lane.turn() is False


async def test_lane_turn_of_a_paused_channel_makes_the_send_its_probe(
    delivery: RigFactory,
) -> None:
    rig = await delivery(answers=[ScriptedApi.meta_error(401, 190)], pause_probe_base_s=0.0)
    rig.lane.account_refused(await account_refused(rig), probe=False)

    probe = await rig.lane.turn()

    assert probe is True
    assert (rig.lane.pause.probes, rig.lane.pause.held) == (1, 0)


async def test_lane_wanted_turns_false_once_the_channel_pauses_except_for_the_probe(
    delivery: RigFactory,
) -> None:
    rig = await delivery(answers=[ScriptedApi.meta_error(401, 190)])
    waiting, probing = rig.lane.wanted(False), rig.lane.wanted(True)
    before = waiting()

    rig.lane.account_refused(await account_refused(rig), probe=False)

    assert (before, waiting(), probing()) == (True, False, True)


@pytest.mark.parametrize("verdict", [Verdict.SENT, Verdict.REJECTED, Verdict.THROTTLED])
async def test_lane_settle_probe_resumes_on_an_answer_that_proves_the_account_works(
    delivery: RigFactory, verdict: Verdict
) -> None:
    rig = await delivery(answers=[ScriptedApi.meta_error(401, 190)])
    rig.lane.account_refused(await account_refused(rig), probe=False)
    await rig.lane.turn()

    rig.lane.settle_probe(verdict, None)

    assert rig.lane.pause.paused is False
    assert paused_gauge(rig, "190") == 0


async def test_lane_settle_probe_stays_paused_on_an_account_answer(delivery: RigFactory) -> None:
    answers = [ScriptedApi.meta_error(401, 190), ScriptedApi.meta_error(403, 200)]
    rig = await delivery(answers=answers)
    rig.lane.account_refused(await account_refused(rig), probe=False)
    await rig.lane.turn()
    again = await account_refused(rig)

    rig.lane.settle_probe(Verdict.ACCOUNT, again)

    assert rig.lane.pause.paused is True
    assert rig.lane.pause.reason == str(again)  # the probe's answer


async def test_lane_settle_probe_without_a_verdict_lets_another_probe_go(
    delivery: RigFactory,
) -> None:
    rig = await delivery(answers=[ScriptedApi.meta_error(401, 190)], pause_probe_base_s=0.0)
    rig.lane.account_refused(await account_refused(rig), probe=False)
    await rig.lane.turn()

    rig.lane.settle_probe(Verdict.OTHER, None)  # a 5xx, no answer: nothing learnt
    next_probe = await rig.lane.turn()

    assert rig.lane.pause.paused is True
    assert next_probe is True


def test_pace_settings_takes_a_channels_section() -> None:
    section = WhatsAppSettings(max_rate_per_s=20.0, pair_burst=45, pair_interval_s=6.0)

    assert pace_settings(section, recovery_s=30.0) == PaceSettings(
        max_rate_per_s=20.0, pair_burst=45, pair_interval_s=6.0, recovery_s=30.0
    )


async def test_lane_refused_again_after_a_probe_went_through_is_the_messages_problem(
    delivery: RigFactory,
) -> None:
    rig = await delivery()
    culprit, other = rig.send(), rig.send()
    refusal = AccountError("HTTP 400 (10): Permission denied for this message", provider_code=10)
    culprit.last_error = refusal

    first = rig.lane.refused_again(culprit)  # it paused the channel
    rig.lane.account_refused(refusal, probe=False)
    rig.lane.settle_probe(Verdict.SENT, None)  # another send probed: the account works
    again = rig.lane.refused_again(culprit)
    other.last_error = refusal
    unrelated = rig.lane.refused_again(other)  # its first refusal: the account's, as far as known

    assert first is None
    assert isinstance(again, ProviderRejectedError)
    assert again.provider_code == 10
    assert "this message is what the provider refuses" in str(again)
    assert unrelated is None
    assert not rig.lane.pause.paused


async def test_lane_paces_instagram_audio_and_video_apart_from_text(
    delivery: RigFactory,
) -> None:
    """Instagram takes audio and video at 10 calls/s against 300 for text (meta/limits.py
    SLOW_MEDIA): slow media waits for its own pace, text never waits for it."""
    media_pace = PaceSettings.media(max_rate_per_s=4.0, recovery_s=30.0)
    rig = await delivery(channel="instagram", media_pace=media_pace)
    audio = dataclasses.replace(
        rig.send().outbound, kind="media", media_type="audio", media_url="https://x/a.mp3"
    )
    image = dataclasses.replace(audio, media_type="image")

    started = time.monotonic()
    for _ in range(6):  # a burst of 4, then one per 0.25 s
        assert await rig.lane.slot(audio, probe=False) is not None
    audio_s = time.monotonic() - started
    started = time.monotonic()
    for _ in range(6):
        await rig.lane.slot(rig.send().outbound, probe=False)
        await rig.lane.slot(image, probe=False)
    others_s = time.monotonic() - started

    assert audio_s >= 0.4
    assert others_s < 0.2
