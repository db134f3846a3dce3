"""Which account sends a message on a channel, and its lane: one lane per sending account.

A message names its account per channel (`account`, formats/message.py) or none (the
channel's `default`). The directory (accounts/) says what that account is now; this module
keeps one `Lane` per account this router has sent for, built on its first message, so each
account has its own pace (its rate and pair limits, keyed in Redis by its provider id: two
routers share it), its own pause and probe, and its own throttle state. One business's expired
token pauses that business's lane only; the others never wait for it.

An account that changed since its lane was built (a rotated token, a new rate, another number)
gets a new adapter and pace at once (`follow` watches the directory): a rotated token is used
from the next call, and a paused account probes at once with it. An account disabled or removed
meanwhile retires its lane: the sends it holds fail with the reason, no call.

A name the directory does not know is looked up once more (the directory reloads: an account
added a moment ago may have beaten its notification here); still unknown, or a disabled
account, it fails that channel of the message (`unknown_account`, `account_disabled`) with no
call: the caller dead-letters it with the reason.

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

    async def lane(self, channel: str, key: str | None) -> Lane | PermanentError:
        """The lane of the account that sends on `channel` (`key` None: the default), or why
        nothing may be sent. A name the directory does not know is looked up once more in the
        database first: an account added a moment ago may not have reached it yet."""
        account = self._directory.find(channel, key)
        if account is None:
            await self._directory.refresh()
            account = self._directory.find(channel, key)
        if account is None:
            return UnknownAccountError(_unknown(channel, key))
        if not account.enabled:
            return _disabled(account)
        lane = self._lanes.get((channel, account.key))
        if lane is None:
            lane = self._make_lane(account, self._label(account.key))
            self._lanes[(channel, account.key)] = lane
        else:
            self._bring_up_to_date(lane, account)
        return lane

    async def follow(self) -> None:
        """Run for as long as the router does: every change of the directory reaches the lanes
        at once, not at their next message: a rotated token ends a pause's wait (the probe goes
        now, with it), a disabled account's held sends stop waiting and fail."""
        directory = self._directory
        while True:
            await directory.wait_changed(directory.generation)
            for (channel, key), lane in list(self._lanes.items()):
                account = directory.find(channel, key)
                if account is None:
                    lane.retire(UnknownAccountError(_unknown(channel, key)))
                elif not account.enabled:
                    lane.retire(_disabled(account))
                else:
                    self._bring_up_to_date(lane, account)

    def _bring_up_to_date(self, lane: Lane, account: Account) -> None:
        if lane.account is account and lane.retired is None:
            return
        if lane.account != account or lane.retired is not None:
            self._refresh(lane, account)  # a new token, rate or number; or enabled again
        else:
            lane.account = account  # the same values, a new object: nothing to rebuild

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


def _disabled(account: Account) -> AccountDisabledError:
    return AccountDisabledError(
        f"{account.ref} is disabled (chat4all-workers accounts enable {account.channel} "
        f"{account.key}); nothing sent"
    )


def _unknown(channel: str, key: str | None) -> str:
    if key is None or key == DEFAULT_KEY:
        return (
            f"the message names no account and {channel} has no default one (set the "
            f"environment's {channel} account, or name an account in `account`); nothing sent"
        )
    return f"no {channel} account {key!r} (chat4all-workers accounts list shows them); nothing sent"
