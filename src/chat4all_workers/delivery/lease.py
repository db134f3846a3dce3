"""The life of one send's lease in its dedup marker (delivery/markers.py), through outages.

A claimed send holds a lease; it ends exactly one way: marked sent (the provider took it; for
Instagram the provider's id is remembered in the provider index for its read receipts),
released (the provider certainly did not take it: the same record tries again), given up on
(`failed:`: FAILED, never sent again by this record), or abandoned in doubt (expired at once,
for the next owner to wait for the provider's word). The marks that must not be lost (sent,
released, given up) outlast a Redis outage (`outlast_outages`); the one on the way out of a
cancelled or stopping send is time-boxed and best effort: a lease left behind expires, and the
next owner treats it as in doubt.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from chat4all_workers.autopipeline import retrieved
from chat4all_workers.delivery.markers import Asked, Claim, Marker, SendMarkers
from chat4all_workers.delivery.provider_index import MessageRef, ProviderIndex
from chat4all_workers.resources import TRANSIENT_ERRORS
from chat4all_workers.role import RoleContext, outlast_outages

log = logging.getLogger(__name__)

# A send's lease is released, or its answer recorded, on the way out within this long.
_SETTLE_S = 2.0
# Channels whose webhooks name a message only by the provider's id (Instagram's read receipts).
_INDEXED = frozenset({"instagram"})


@dataclass
class Lease:
    """The dedup lease of one send; `settled` once it was marked sent, released, given up on
    or abandoned (in doubt, to the next owner). `sent_as`: the provider took it, the mark is on
    its way."""

    key: str
    value: str
    settled: bool = False
    sent_as: str | None = None
    in_doubt: bool = False  # a request may have reached the provider, its verdict not known yet


class Leases:
    def __init__(self, ctx: RoleContext, markers: SendMarkers, index: ProviderIndex) -> None:
        self._ctx = ctx
        self.markers = markers
        self._index = index

    async def claim(self, key: str, origin: str, *, asked: Asked | None = None) -> Claim:
        return await self.markers.claim(key, origin, asked=asked)

    def mark_sent(
        self, lease: Lease, provider_message_id: str, *, channel: str, ref: MessageRef
    ) -> Coroutine[Any, Any, None]:
        """The provider has it: record that through a Redis outage, or a redelivery would find
        an expired lease and wait for the provider's word to learn it.

        The mark is on its way to Redis when this returns, and awaiting the result waits until
        it is recorded: the router produces the SENT meanwhile, and finds the mark's reply in
        when Kafka's ack comes (one wait a message fewer). A caller that fails before awaiting
        it `close()`s it; `settle_on_the_way_out` then records the mark again."""
        lease.sent_as = provider_message_id
        issued = None
        if channel not in _INDEXED:  # an indexed channel's two writes go in `_record_sent`
            issued = self.markers.mark_sent(lease.key, provider_message_id)
            issued.add_done_callback(retrieved)  # read, even by a caller that never awaits
        return self._marked(lease, issued, channel=channel, ref=ref)

    async def _marked(
        self,
        lease: Lease,
        issued: asyncio.Future[Any] | None,
        *,
        channel: str,
        ref: MessageRef,
    ) -> None:
        if issued is not None:
            try:
                await issued
            except TRANSIENT_ERRORS:
                issued = None  # again, until Redis is back
        if issued is None:
            await outlast_outages(
                self._ctx,
                lambda: self._record_sent(lease, channel=channel, ref=ref),
                what="marking the send done",
            )
        lease.settled = True

    async def release(self, lease: Lease) -> None:
        """Forget a send the provider did not take, so that this record tries it again."""
        await outlast_outages(
            self._ctx,
            lambda: self.markers.release(lease.key, lease.value),
            what="releasing the lease",
        )
        lease.settled = True

    async def withdraw(self, asked: Asked) -> None:
        """A claim asked for ahead of its send (`SendMarkers.ask`) that goes no further now
        (its window closed, its account paused while it was asked): released if it was taken,
        through an outage. Its reply is not waited for: the release follows it on the same
        connection, and removes only this lease."""
        asked.reply.add_done_callback(retrieved)
        await self.release(Lease(asked.key, asked.lease))

    async def withdraw_on_the_way_out(self, asked: Asked) -> None:
        """`withdraw`, time-boxed and best effort (cancelled, stopping, an outage): a lease
        left behind expires, and its next owner waits for the provider's word first."""
        asked.reply.add_done_callback(retrieved)
        try:
            async with asyncio.timeout(_SETTLE_S):
                await self.markers.release(asked.key, asked.lease)
        except TRANSIENT_ERRORS as exc:
            log.warning("could not release the send lease %s on the way out: %r", asked.key, exc)

    async def renew(self, lease: Lease) -> Marker | None:
        """Renew the lease before another attempt: None when renewed; else it is not ours any
        more (settled), and the marker as it is now (`sent:`: the provider's word made it so)."""
        renewed = await self.markers.renew(lease.key, lease.value)
        if renewed is not None:
            lease.value = renewed
            return None
        lease.settled = True
        marker = await self.markers.read(lease.key)
        lease.sent_as = marker.provider_message_id or None
        return marker

    async def give_up(
        self, key: str, lease: Lease | None, *, error_type: str, origin: str
    ) -> Marker:
        """Mark the send given up by the record at `origin` (`failed:`, never deleted: a
        redelivery of this record must not send it); what the marker holds afterwards (a
        `sent:` when the provider's word came first)."""
        value = None if lease is None else lease.value

        async def give_up() -> Marker:
            return await self.markers.give_up(key, value, error_type=error_type, origin=origin)

        marker = await outlast_outages(self._ctx, give_up, what="giving up on the send")
        if lease is not None:
            lease.settled = True
        return marker

    async def settle_on_the_way_out(self, lease: Lease, *, channel: str, ref: MessageRef) -> bool:
        """Cancelled, stopping, an outage, while the lease is ours: mark it sent if the provider
        took it; in doubt, expire it now for the next owner to wait for the provider's word
        (True: handed back in doubt); else release it."""
        if lease.settled:
            return False
        lease.settled = True
        try:
            async with asyncio.timeout(_SETTLE_S):
                if lease.sent_as is not None:
                    await self._record_sent(lease, channel=channel, ref=ref)
                elif lease.in_doubt:
                    await self.markers.abandon(lease.key, lease.value)
                    return True
                else:
                    await self.markers.release(lease.key, lease.value)
        except TRANSIENT_ERRORS as exc:
            log.warning("could not settle the send lease %s on the way out: %r", lease.key, exc)
        return False

    async def _record_sent(self, lease: Lease, *, channel: str, ref: MessageRef) -> None:
        assert lease.sent_as is not None
        await self.markers.mark_sent(lease.key, lease.sent_as)
        if channel in _INDEXED:
            await self._index.remember(channel, [(lease.sent_as, ref)])
