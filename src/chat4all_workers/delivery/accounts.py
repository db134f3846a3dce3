"""Which account sends a message on a channel, and its lane: one lane per sending account.

A message names its account per channel (`account`, formats/message.py) or none (the
channel's `default`). The directory (accounts/) says what that account is now; this module
keeps one `Lane` per account this router has sent for, built on its first message, so each
account has its own pace (its rate and pair limits, keyed in Redis by its provider id: two
routers share it), its own pause and probe, and its own throttle state. One business's expired
token pauses that business's lane only; the others never wait for it.

An account that changed since its lane was built (the directory's `version`: a rotated token, a
new rate) gets a new adapter and pace before its next call: a rotated token is used from the
next call, and a paused account probes at once with it. An account that points at another
provider id is another sender: a new lane (a new pace, no pause).

A name the directory does not know, or a disabled account, fails that channel of the message
(`unknown_account`, `account_disabled`) with no call: the caller dead-letters it with the
reason.

Metrics carry an `account` label only up to `label_limit` accounts per process (the first seen
keep their key; the rest share `_other`), so a deployment with thousands of accounts keeps a
bounded number of series; /readyz and `status` name every account whatever the limit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from chat4all_workers.accounts.model import DEFAULT_KEY, Account, Directory
from chat4all_workers.delivery.lanes import Lane
from chat4all_workers.errors import AccountDisabledError, PermanentError, UnknownAccountError

OTHER_LABEL = "_other"

MakeLane = Callable[[Account, str], Lane]  # (account, its metric label) -> a new lane
Refresh = Callable[[Lane, Account], None]  # give a lane the account's new adapter and pace


class SendingAccounts:
    def __init__(
        self, directory: Directory, *, make_lane: MakeLane, refresh: Refresh, label_limit: int
    ) -> None:
        self._directory = directory
        self._make_lane = make_lane
        self._refresh = refresh
        self._label_limit = label_limit
        self._lanes: dict[tuple[str, str], Lane] = {}
        self._labels: set[str] = set()

    def lane(self, channel: str, key: str | None) -> Lane | PermanentError:
        """The lane of the account that sends on `channel` (`key` None: the default), or why
        nothing may be sent."""
        account = self._directory.find(channel, key)
        if account is None:
            return UnknownAccountError(_unknown(channel, key))
        if not account.enabled:
            return AccountDisabledError(
                f"{account.ref} is disabled (chat4all-workers accounts enable {channel} "
                f"{account.key}); nothing sent"
            )
        lane = self._lanes.get((channel, account.key))
        if lane is None or lane.account.provider_id != account.provider_id:
            if lane is not None:
                lane.pause.close()
            lane = self._make_lane(account, self._label(account.key))
            self._lanes[(channel, account.key)] = lane
        elif lane.account.version != account.version or lane.account is not account:
            if lane.account != account:
                self._refresh(lane, account)
            else:
                lane.account = account  # the same values, a new object: nothing to rebuild
        return lane

    def lanes(self) -> Iterable[Lane]:
        return list(self._lanes.values())

    def close(self) -> None:
        """The process stops: sends held by a paused account give their records back."""
        for lane in self._lanes.values():
            lane.pause.close()

    def describe(self) -> dict[str, Any]:
        """/readyz `accounts`: every account this router has sent for, active or paused (and
        why, in the provider's words)."""
        return {
            lane.name: {"provider_id": lane.account.provider_id, **lane.pause.stats()}
            for lane in self._lanes.values()
        }

    def channels(self) -> dict[str, Any]:
        """/readyz `channels`: per channel, how many of its accounts are paused."""
        summary: dict[str, dict[str, Any]] = {}
        for lane in self._lanes.values():
            entry = summary.setdefault(lane.channel, {"accounts": 0, "paused": []})
            entry["accounts"] += 1
            if lane.pause.paused:
                entry["paused"].append(lane.account.key)
        for entry in summary.values():
            paused, total = len(entry["paused"]), entry["accounts"]
            entry["state"] = "active" if not paused else "paused" if paused == total else "partly"
        return summary

    def _label(self, key: str) -> str:
        if key in self._labels or len(self._labels) < self._label_limit:
            self._labels.add(key)
            return key
        return OTHER_LABEL


def _unknown(channel: str, key: str | None) -> str:
    if key is None or key == DEFAULT_KEY:
        return (
            f"the message names no account and {channel} has no default one (set the "
            f"environment's {channel} account, or name an account in `account`); nothing sent"
        )
    return f"no {channel} account {key!r} (chat4all-workers accounts list shows them); nothing sent"
