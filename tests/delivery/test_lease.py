"""The life of one send's lease (delivery/lease.py) in its dedup marker, against real Redis: marked
sent (through an outage), released, renewed or found lost, given up on, and settled on the way out
of a cancelled or stopping send."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from chat4all_workers.autopipeline import AutoPipeline
from chat4all_workers.delivery.lease import Lease, Leases
from chat4all_workers.delivery.markers import Kind, SendMarkers, State
from chat4all_workers.delivery.provider_index import ProviderIndex
from harness.deployment import free_port
from harness.waiting import eventually
from tests.delivery.conftest import MARKER_TTL_S, ORIGIN, RigFactory
from tests.support import own_redis

pytestmark = [pytest.mark.stack, pytest.mark.timeout(60)]


async def test_leases_mark_sent_records_the_providers_id_and_settles_the_lease(
    delivery: RigFactory,
) -> None:
    rig = await delivery()
    send = rig.send()
    lease = await rig.claim(send)

    await rig.leases.mark_sent(lease, "wamid.1", channel="whatsapp", ref=send.ref)

    marker = await rig.marker(send)
    assert (marker.kind, marker.provider_message_id) == (Kind.SENT, "wamid.1")
    assert (lease.settled, lease.sent_as) == (True, "wamid.1")
    assert await rig.index.lookup("whatsapp", ["wamid.1"]) == {}  # WhatsApp echoes our ids


async def test_leases_mark_sent_is_on_its_way_before_it_is_awaited(
    delivery: RigFactory,
) -> None:
    """The router produces the SENT while Redis records the mark: the mark is written without
    being awaited; a caller that fails first closes it, and the way out records it (settled)."""
    rig = await delivery()
    send = rig.send()
    lease = await rig.claim(send)

    marking = rig.leases.mark_sent(lease, "wamid.2", channel="whatsapp", ref=send.ref)

    async def marked() -> bool:
        return (await rig.marker(send)).kind is Kind.SENT

    await eventually(marked, timeout_s=5, message="the mark written, not awaited")
    marking.close()  # the caller failed before awaiting it (say, producing the SENT)
    assert (lease.settled, lease.sent_as) == (False, "wamid.2")
    handed_back = await rig.leases.settle_on_the_way_out(lease, channel="whatsapp", ref=send.ref)
    marker = await rig.marker(send)
    assert (handed_back, lease.settled) == (False, True)
    assert (marker.kind, marker.provider_message_id) == (Kind.SENT, "wamid.2")


async def test_leases_withdraw_releases_a_claim_asked_ahead_and_nothing_else(
    delivery: RigFactory,
) -> None:
    """A claim asked for with the window read (`SendMarkers.ask`) whose send goes no further:
    withdrawn, ours is released; one that found another worker's lease leaves it alone."""
    rig = await delivery()
    ours, theirs = rig.send(), rig.send()
    await rig.redis.set(theirs.key, "lease:other:9999999999.000", ex=60)

    asked_ours = rig.markers.ask(ours.key)
    asked_theirs = rig.markers.ask(theirs.key)
    await rig.leases.withdraw(asked_ours)
    await rig.leases.withdraw_on_the_way_out(asked_theirs)

    assert (await asked_ours.reply, await asked_theirs.reply) == (b"OK", None)
    assert await rig.redis.get(ours.key) is None
    assert await rig.redis.get(theirs.key) == b"lease:other:9999999999.000"


async def test_leases_mark_sent_of_an_instagram_send_remembers_its_mid(
    delivery: RigFactory,
) -> None:
    rig = await delivery(channel="instagram")
    send = rig.send()
    lease = await rig.claim(send)

    await rig.leases.mark_sent(lease, "mid.1", channel="instagram", ref=send.ref)

    assert await rig.index.lookup("instagram", ["mid.1"]) == {"mid.1": send.ref}


async def test_leases_mark_sent_waits_out_a_redis_outage(
    delivery: RigFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rig = await delivery()
    send = rig.send()
    port = free_port()  # a Redis that is down until the test starts it
    down = aioredis.from_url(f"redis://127.0.0.1:{port}")
    pipe = AutoPipeline(down, spawn=rig.ctx.resources.spawn())
    try:
        markers = SendMarkers(down, pipe, ttl_s=MARKER_TTL_S, lease_s=30.0)
        index = ProviderIndex(down, key=str, ttl_s=MARKER_TTL_S, pipe=markers.pipe)
        leases = Leases(rig.ctx, markers, index)
        lease = Lease(send.key, "lease:ours:9999999999.000")
        with caplog.at_level(logging.WARNING, logger="chat4all_workers.role"):
            marking = asyncio.ensure_future(
                leases.mark_sent(lease, "wamid.1", channel="whatsapp", ref=send.ref)
            )
            await eventually(
                lambda: any("looks unreachable" in r.getMessage() for r in caplog.records),
                timeout_s=10,
                message="marking the send waiting out the outage",
            )
            with own_redis(port, tmp_path):  # Redis is back
                await asyncio.wait_for(marking, 10)
                marked = await down.get(send.key)
    finally:
        pipe.close()
        await down.aclose()

    assert marked == b"sent:wamid.1"
    assert lease.settled


async def test_leases_release_forgets_a_send_the_provider_did_not_take(
    delivery: RigFactory,
) -> None:
    rig = await delivery()
    send = rig.send()
    lease = await rig.claim(send)

    await rig.leases.release(lease)

    assert (await rig.marker(send)).kind is Kind.ABSENT
    assert lease.settled


async def test_leases_renew_keeps_the_lease_ours_for_another_lease_s(delivery: RigFactory) -> None:
    rig = await delivery(lease_s=30.0)
    send = rig.send()
    lease = await rig.claim(send)
    token = lease.value.split(":")[1]
    soon = time.time() + 1.0  # a lease about to run out
    lease.value = f"lease:{token}:{soon:.3f}"
    await rig.redis.set(send.key, lease.value, keepttl=True)

    lost = await rig.leases.renew(lease)

    after = await rig.marker(send)
    assert lost is None
    assert after.value == lease.value
    assert after.value.startswith(f"lease:{token}:")
    assert after.deadline > soon + 20  # about now + lease_s
    assert not lease.settled


async def test_leases_renew_returns_the_providers_word_when_it_came_first(
    delivery: RigFactory,
) -> None:
    rig = await delivery()
    send = rig.send()
    lease = await rig.claim(send)
    await rig.provider_word(send.key, "wamid.W")

    marker = await rig.leases.renew(lease)

    assert marker is not None
    assert (marker.kind, marker.provider_message_id) == (Kind.SENT, "wamid.W")
    assert (lease.settled, lease.sent_as) == (True, "wamid.W")


async def test_leases_renew_returns_the_marker_of_the_worker_that_took_the_lease(
    delivery: RigFactory,
) -> None:
    rig = await delivery()
    send = rig.send()
    lease = await rig.claim(send)
    await rig.redis.set(send.key, "lease:another:9999999999.000", keepttl=True)

    marker = await rig.leases.renew(lease)

    assert marker is not None
    assert (marker.kind, marker.value) == (Kind.LEASE, "lease:another:9999999999.000")
    assert (lease.settled, lease.sent_as) == (True, None)


async def test_leases_give_up_marks_the_send_given_up_by_this_record(
    delivery: RigFactory,
) -> None:
    rig = await delivery()
    send = rig.send()
    lease = await rig.claim(send)

    marker = await rig.leases.give_up(
        send.key, lease, error_type="retries_exhausted", origin=ORIGIN
    )

    assert marker.value == f"failed:retries_exhausted:{ORIGIN}"
    assert (await rig.marker(send)).value == marker.value
    assert lease.settled


async def test_leases_give_up_keeps_a_providers_sent(delivery: RigFactory) -> None:
    rig = await delivery()
    send = rig.send()
    lease = await rig.claim(send)
    await rig.provider_word(send.key, "wamid.W")

    marker = await rig.leases.give_up(send.key, lease, error_type="delivery_unknown", origin=ORIGIN)

    assert (marker.kind, marker.provider_message_id) == (Kind.SENT, "wamid.W")
    assert await rig.redis.get(send.key) == b"sent:wamid.W"


async def test_leases_give_up_without_a_lease_writes_the_marker_with_its_ttl(
    delivery: RigFactory,
) -> None:
    rig = await delivery()
    send = rig.send()  # released before (a throttled send): no marker

    marker = await rig.leases.give_up(send.key, None, error_type="throttle_deadline", origin=ORIGIN)

    assert marker.value == f"failed:throttle_deadline:{ORIGIN}"
    assert 0 < await rig.redis.ttl(send.key) <= MARKER_TTL_S


async def test_leases_settle_on_the_way_out_abandons_an_in_doubt_lease(
    delivery: RigFactory,
) -> None:
    rig = await delivery()
    send = rig.send()
    lease = await rig.claim(send)
    lease.in_doubt = True

    handed_back = await rig.leases.settle_on_the_way_out(lease, channel="whatsapp", ref=send.ref)

    marker = await rig.marker(send)
    next_claim = await rig.leases.claim(send.key, ORIGIN)
    assert handed_back is True
    assert (marker.kind, marker.deadline) == (Kind.LEASE, 0.0)  # expired now
    assert next_claim.state is State.ORPHANED  # the next owner waits for the provider's word


async def test_leases_settle_on_the_way_out_releases_a_clean_lease(delivery: RigFactory) -> None:
    rig = await delivery()
    send = rig.send()
    lease = await rig.claim(send)

    handed_back = await rig.leases.settle_on_the_way_out(lease, channel="whatsapp", ref=send.ref)

    assert handed_back is False
    assert (await rig.marker(send)).kind is Kind.ABSENT
    assert lease.settled


async def test_leases_settle_on_the_way_out_marks_a_send_the_provider_took(
    delivery: RigFactory,
) -> None:
    rig = await delivery(channel="instagram")
    send = rig.send()
    lease = await rig.claim(send)
    lease.sent_as = "mid.9"  # answered, not marked yet

    handed_back = await rig.leases.settle_on_the_way_out(lease, channel="instagram", ref=send.ref)

    assert handed_back is False
    assert await rig.redis.get(send.key) == b"sent:mid.9"
    assert await rig.index.lookup("instagram", ["mid.9"]) == {"mid.9": send.ref}


async def test_leases_settle_on_the_way_out_leaves_a_settled_lease_alone(
    delivery: RigFactory,
) -> None:
    rig = await delivery()
    send = rig.send()
    lease = await rig.claim(send)
    lease.settled = True  # e.g. given up on: the marker is no longer the lease's to touch

    handed_back = await rig.leases.settle_on_the_way_out(lease, channel="whatsapp", ref=send.ref)

    assert handed_back is False
    assert (await rig.marker(send)).value == lease.value


async def test_leases_settle_on_the_way_out_logs_an_unreachable_redis_and_goes_on(
    delivery: RigFactory, caplog: pytest.LogCaptureFixture
) -> None:
    rig = await delivery()
    send = rig.send()
    down = aioredis.from_url(f"redis://127.0.0.1:{free_port()}")
    pipe = AutoPipeline(down, spawn=rig.ctx.resources.spawn())
    try:
        markers = SendMarkers(down, pipe, ttl_s=MARKER_TTL_S, lease_s=30.0)
        leases = Leases(rig.ctx, markers, ProviderIndex(down, key=str, ttl_s=MARKER_TTL_S))
        lease = Lease(send.key, "lease:ours:9999999999.000")
        with caplog.at_level(logging.WARNING, logger="chat4all_workers.delivery.lease"):
            handed_back = await leases.settle_on_the_way_out(
                lease, channel="whatsapp", ref=send.ref
            )
    finally:
        pipe.close()
        await down.aclose()

    assert handed_back is False
    assert lease.settled
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning.startswith(f"could not settle the send lease {send.key} on the way out: ")
