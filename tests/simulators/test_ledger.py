"""What a mock saw (simulators/ledger.py): the messages accepted and the outcomes counted."""

from __future__ import annotations

from chat4all_workers.simulators.ledger import Accepted, Ledger


def accepted(provider_id: str, *, recipient: str, account: str = "1001") -> Accepted:
    return Accepted(
        provider_message_id=provider_id,
        message_id=None,
        conversation_id=None,
        recipient=recipient,
        text="hello",
        accepted_at=0.0,
        account=account,
    )


def test_ledger_accept_lists_the_message_and_counts_it() -> None:
    ledger = Ledger("whatsapp")

    ledger.accept(accepted("wamid.1", recipient="+5511999990000"))
    ledger.count("throttled")

    assert [a.provider_message_id for a in ledger.accepted] == ["wamid.1"]
    assert ledger.counts["accepted"] == 1
    assert ledger.counts["throttled"] == 1
    assert ledger.counts["requests"] == 0


def test_ledger_keeps_the_newest_accepted_messages_only() -> None:
    ledger = Ledger("instagram", max_remembered=2)

    for n in range(3):
        ledger.accept(accepted(f"mid.{n}", recipient="u1"))

    assert [a.provider_message_id for a in ledger.accepted] == ["mid.1", "mid.2"]
    assert ledger.counts["accepted"] == 3


def test_ledger_last_sent_to_is_the_newest_from_that_account_to_that_wa_id() -> None:
    ledger = Ledger("whatsapp")
    ledger.accept(accepted("wamid.old", recipient="+55 11 99999-0000"))
    ledger.accept(accepted("wamid.other-account", recipient="+5511999990000", account="2002"))
    ledger.accept(accepted("wamid.other-user", recipient="+5511888880000"))
    ledger.accept(accepted("wamid.new", recipient="+5511999990000"))
    ledger.accept(accepted("wamid.after", recipient="+5511777770000"))

    assert ledger.last_sent_to("1001", "5511999990000") == "wamid.new"
    assert ledger.last_sent_to("2002", "+5511999990000") == "wamid.other-account"
    assert ledger.last_sent_to("1001", "+5511000000000") == ""
