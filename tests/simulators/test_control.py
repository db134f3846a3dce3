"""A mock's control endpoints (simulators/control.py): how `POST /__mock__/inbound` is read."""

from __future__ import annotations

import time

import pytest

from chat4all_workers.simulators.control import Control
from chat4all_workers.simulators.inbox import Inbox, UserMessage
from chat4all_workers.simulators.ledger import Accepted, Ledger
from tests.simulators.support import simulated_account


def control(*account_ids: str, ledger: Ledger | None = None) -> Control:
    ledger = ledger or Ledger("whatsapp")
    accounts = {a: simulated_account(a, token=f"token-{a}") for a in account_ids or ("1001",)}
    return Control("whatsapp", accounts, ledger, Inbox("whatsapp", ledger))


def test_control_read_inbound_takes_a_text_from_the_only_account() -> None:
    account, message = control().read_inbound({"from": "+5511999990000", "text": "oi"})

    assert account.id == "1001"
    assert message == UserMessage("+5511999990000", "oi")


def test_control_read_inbound_reacts_to_the_newest_message_sent_to_the_user() -> None:
    ledger = Ledger("whatsapp")
    ledger.accept(
        Accepted("wamid.7", None, None, "+5511999990000", "hello", time.time(), account="1001")
    )

    _, message = control(ledger=ledger).read_inbound({"from": "5511999990000", "type": "reaction"})

    assert message.kind == "reaction"
    assert message.reacting_to == "wamid.7"
    assert message.text == "\N{THUMBS UP SIGN}"


@pytest.mark.parametrize(
    ("doc", "error", "words"),
    [
        (["not", "an", "object"], TypeError, "JSON object"),
        ({"text": "hi"}, ValueError, '"from"'),
        ({"from": "5511", "type": "sticker"}, ValueError, '"type"'),
        ({"from": "5511", "at_s": time.time() + 3600}, ValueError, '"at_s"'),
        ({"from": "5511", "type": "reaction"}, ValueError, '"message_id"'),
        ({"from": "5511", "account": "9999"}, LookupError, "no account"),
    ],
)
def test_control_read_inbound_refuses_what_it_cannot_use(
    doc: object, error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        control().read_inbound(doc)


def test_control_read_inbound_needs_the_account_named_when_there_are_several() -> None:
    several = control("1001", "2002")

    with pytest.raises(LookupError, match="several accounts"):
        several.read_inbound({"from": "5511999990000"})
    account, _ = several.read_inbound({"from": "5511999990000", "account": 2002})
    assert account.id == "2002"
