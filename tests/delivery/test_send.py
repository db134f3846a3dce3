"""One (message, channel) on its way (delivery/send.py): what it names and what it starts with."""

from __future__ import annotations

import pytest

from chat4all_workers.delivery.provider_index import MessageRef
from tests.delivery.conftest import RigFactory

pytestmark = [pytest.mark.stack, pytest.mark.timeout(30)]


async def test_send_ref_names_its_message(delivery: RigFactory) -> None:
    rig = await delivery()

    send = rig.send(conversation=7)

    assert send.ref == MessageRef(send.message.message_id, 7)


async def test_send_starts_unthrottled_without_an_error(delivery: RigFactory) -> None:
    rig = await delivery()

    send = rig.send()

    assert (send.throttles, send.throttled_since, send.last_error) == (0, None, None)
    assert send.failures == []
