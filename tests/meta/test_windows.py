"""meta/windows.py: when Meta lets a free-form message go, and with what tag."""

from __future__ import annotations

import pytest

from chat4all_workers.meta.windows import HUMAN_AGENT_WINDOW_S, WINDOW_S, decide, user_key

H = 3600.0


@pytest.mark.parametrize("channel", ["whatsapp", "instagram"])
def test_decide_sends_within_the_24_hour_window_and_when_the_window_is_not_known(
    channel: str,
) -> None:
    assert decide(channel, kind="text", human_agent=False, age_s=23 * H, closed=False).send
    assert decide(channel, kind="media", human_agent=False, age_s=None, closed=False).send


@pytest.mark.parametrize("channel", ["whatsapp", "instagram"])
def test_decide_refuses_a_free_form_message_past_the_window(channel: str) -> None:
    decision = decide(channel, kind="text", human_agent=False, age_s=WINDOW_S + 1, closed=False)

    assert not decision.send
    assert "24" in decision.reason


def test_decide_lets_a_whatsapp_template_go_whatever_the_window() -> None:
    assert decide("whatsapp", kind="template", human_agent=False, age_s=90 * H, closed=True).send


def test_decide_tags_an_instagram_human_agent_message_up_to_7_days() -> None:
    tagged = decide("instagram", kind="text", human_agent=True, age_s=3 * 24 * H, closed=False)
    late = decide(
        "instagram", kind="text", human_agent=True, age_s=HUMAN_AGENT_WINDOW_S + 1, closed=False
    )
    fresh = decide("instagram", kind="text", human_agent=True, age_s=H, closed=False)

    assert (tagged.send, tagged.tag) == (True, "HUMAN_AGENT")
    assert not late.send
    assert (fresh.send, fresh.tag) == (True, None)  # inside the standard window: no tag


def test_decide_never_tags_on_whatsapp_nor_without_a_known_last_message() -> None:
    whatsapp = decide("whatsapp", kind="text", human_agent=True, age_s=3 * 24 * H, closed=False)
    unknown = decide("instagram", kind="text", human_agent=True, age_s=None, closed=True)

    assert not whatsapp.send
    assert not unknown.send


def test_decide_refuses_a_window_the_provider_closed_until_the_user_writes() -> None:
    assert not decide("whatsapp", kind="text", human_agent=False, age_s=H, closed=True).send
    assert not decide("whatsapp", kind="text", human_agent=False, age_s=None, closed=True).send


def test_user_key_is_whatsapps_digits_and_instagrams_id() -> None:
    assert user_key("whatsapp", "+55 11 99999-0000") == "5511999990000"
    assert user_key("instagram", "17841400000000000") == "17841400000000000"
