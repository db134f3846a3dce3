"""The arguments of `accounts` (cli/accounts/parsers.py): a pace must be a finite number."""

from __future__ import annotations

import pytest

from chat4all_workers.cli import build_parser

ADD = ["accounts", "add", "whatsapp", "acme", "--provider-id", "1001", "--app", "123"]


def test_parsers_add_reads_the_paces_and_the_actions_name() -> None:
    args = build_parser().parse_args([*ADD, "--rate", "20", "--pair-interval-s", "6"])

    assert (args.accounts_command, args.channel, args.key) == ("add", "whatsapp", "acme")
    assert (args.rate, args.pair_interval_s, args.pair_burst) == (20.0, 6.0, None)


@pytest.mark.parametrize("rate", ["1e10", "inf", "-1"])
def test_parsers_add_refuses_a_pace_out_of_range(
    rate: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([*ADD, "--rate", rate])

    assert exited.value.code == 2
    assert "--rate" in capsys.readouterr().err
