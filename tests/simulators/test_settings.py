"""`[mocks]` (simulators/settings.py): the values the field rules cannot check, and what the
checked-in supervisor.toml gives `make run`."""

from __future__ import annotations

import pytest

from chat4all_workers.errors import ConfigError
from chat4all_workers.ops.send import DEMO_RECIPIENTS
from chat4all_workers.roles import load_settings
from chat4all_workers.simulators.settings import MockSettings
from harness import REPO


def test_mock_settings_open_windows_for_names_users_of_one_channel_or_of_both() -> None:
    settings = MockSettings(open_windows_for=("whatsapp:+5511", "instagram:1784", "both"))

    assert settings.users_to_open("whatsapp") == ["+5511", "both"]
    assert settings.users_to_open("instagram") == ["1784", "both"]


def test_mock_settings_templates_take_several_languages() -> None:
    settings = MockSettings(templates={"hello_world": "en_US:0", "order": "pt_BR:2 en_US:1"})

    assert settings.template_params() == {
        ("hello_world", "en_US"): 0,
        ("order", "pt_BR"): 2,
        ("order", "en_US"): 1,
    }


@pytest.mark.parametrize(
    ("mocks", "problem"),
    [
        ({"templates": {"order": "pt_BR"}}, 'mocks.templates (supervisor.toml): order: expected "'),
        ({"templates": {"order": ""}}, "mocks.templates (supervisor.toml): order: expected"),
        ({"open_windows_for": ["telegram:1"]}, "unknown channel 'telegram'"),
        ({"open_windows_for": ["whatsapp:"]}, "'whatsapp:': no user"),
        ({"windows": "closed"}, "mocks.windows (supervisor.toml): must be one of enforce, open"),
        ({"async_failure_code": 100}, "mocks.async_failure_code (supervisor.toml): must be one of"),
        ({"gateway_timeout_rate": 1.5}, "must be at most 1"),
    ],
)
def test_mock_settings_refuse_what_they_cannot_use(mocks: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings({}, {"mocks": mocks}, roles=["whatsapp_mock"])

    assert problem in str(error.value)


def test_checked_in_supervisor_toml_opens_the_windows_of_sends_demo_recipients() -> None:
    mocks = load_settings({}, REPO / "supervisor.toml").section(MockSettings)

    assert mocks.windows == "enforce"
    for channel, recipient in DEMO_RECIPIENTS.items():
        assert mocks.users_to_open(channel) == [recipient]
