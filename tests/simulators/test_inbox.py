"""Users write to a mock's accounts (simulators/inbox.py): a window opens, a webhook is due."""

from __future__ import annotations

import time

from chat4all_workers.simulators.inbox import Inbox, UserMessage
from chat4all_workers.simulators.ledger import Ledger
from tests.simulators.support import pending_webhooks, simulated_account


async def test_inbox_receive_opens_the_window_and_schedules_metas_webhook() -> None:
    ledger = Ledger("whatsapp")
    inbox = Inbox("whatsapp", ledger)
    account = simulated_account()

    notification = inbox.receive(account, UserMessage("+55 11 99999-0000", "hi"))

    value = notification["entry"][0]["changes"][0]["value"]
    assert value["messages"][0]["from"] == "5511999990000"
    assert value["messages"][0]["id"] == "wamid.MOCKIN000000000001"
    assert value["messages"][0]["text"] == {"body": "hi"}
    age_s = account.windows.age_s("5511999990000", time.time())
    assert age_s is not None
    assert 0 <= age_s < 5
    assert pending_webhooks(account) == 1
    assert ledger.counts["inbound"] == 1


async def test_inbox_receive_backdates_a_message_written_at_at_s() -> None:
    inbox = Inbox("instagram", Ledger("instagram"))
    account = simulated_account("17841400000000000", channel="instagram")
    at_s = time.time() - 3600

    notification = inbox.receive(account, UserMessage("igsid-1", "hi", at_s=at_s))

    assert notification["entry"][0]["messaging"][0]["timestamp"] == int(at_s * 1000)
    age_s = account.windows.age_s("igsid-1", time.time())
    assert age_s is not None
    assert 3599 <= age_s < 3605


async def test_inbox_open_windows_has_every_user_write_to_every_account() -> None:
    ledger = Ledger("whatsapp")
    inbox = Inbox("whatsapp", ledger)
    accounts = [simulated_account("1001"), simulated_account("2002", token="token-2002")]

    inbox.open_windows(["+5511999990000", "+5511888880000"], accounts)

    now_s = time.time()
    for account in accounts:
        assert account.windows.age_s("5511999990000", now_s) is not None
        assert account.windows.age_s("5511888880000", now_s) is not None
        assert pending_webhooks(account) == 2
    assert ledger.counts["inbound"] == 4
