"""One simulated account's state (simulators/accounts.py): its users' windows."""

from __future__ import annotations

from chat4all_workers.simulators.accounts import Windows


def test_windows_run_from_the_users_latest_message() -> None:
    windows = Windows(longest_s=100.0)
    windows.record("u", 50.0, now_s=60.0)
    windows.record("u", 10.0, now_s=60.0)  # an older message arriving late

    assert windows.age_s("u", now_s=60.0) == 10.0
    assert windows.age_s("someone else", now_s=60.0) is None
