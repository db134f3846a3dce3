"""Our ids for the statuses a notification carries, and the provider's word they prove.

A WhatsApp status names our message itself (the callback data our send set); an Instagram read
receipt names only the provider's `mid`, looked up in the provider index (delivery/
provider_index.py; a receipt the index does not know is ignored as `unknown_message`), and an
Instagram echo carrying our metadata is remembered there for the receipts to come.

Every verified status of one of our messages (sent, delivered, read, failed; an echo or a read
receipt) proves the provider accepted that send: its dedup marker
`message:dedup:{message_id}:{channel}` becomes `sent:{provider_message_id}` unless it already
is (delivery/markers.py `ProviderVerdicts`: one script per marker, one round trip per
request), settling a send whose outcome the router could not know. Counted in
`webhook_verdicts_total{channel,marker}` by what the marker held.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from chat4all_workers.delivery.markers import ProviderVerdicts, marker_key
from chat4all_workers.delivery.provider_index import MessageRef, ProviderIndex
from chat4all_workers.intake.accounting import Accounting
from chat4all_workers.meta.events import Parsed, StatusEvent


@dataclasses.dataclass(eq=False, slots=True)
class ProviderWord:
    """Completes the statuses' ids and records the provider's word they prove."""

    index: ProviderIndex
    verdicts: ProviderVerdicts
    _: dataclasses.KW_ONLY
    key: Callable[[str], str]
    accounting: Accounting

    async def statuses(self, channel: str, parsed: Parsed) -> list[StatusEvent]:
        """Every status with our message's ids; a read receipt's are looked up (an unknown one
        is ignored), an echo's are remembered for the receipts to come."""
        unknown = [s.provider_message_id for s in parsed.statuses if s.message_id is None]
        found = await self.index.lookup(channel, unknown) if unknown else {}
        statuses, echoes = [], []
        for status in parsed.statuses:
            if status.message_id is None:
                ref = found.get(status.provider_message_id)
                if ref is None:
                    parsed.ignored.append((status.kind, "unknown_message"))
                    continue
                status = dataclasses.replace(
                    status, message_id=ref.message_id, conversation_id=ref.conversation_id
                )
            elif status.kind == "echo" and status.conversation_id is not None:
                ref = MessageRef(status.message_id, status.conversation_id)
                echoes.append((status.provider_message_id, ref))
            statuses.append(status)
        if echoes:
            await self.index.remember(channel, echoes)
        return statuses

    async def record(self, statuses: Sequence[StatusEvent]) -> None:
        """The provider's word for each (message, channel) into its dedup marker."""
        await self.record_each([statuses])

    async def record_each(self, requests: Sequence[Sequence[StatusEvent]]) -> None:
        """`record` for the statuses of several requests, in one call: each request's marker
        once, counted as if each had recorded its own."""
        keys: list[tuple[str, str]] = []  # (marker key, provider message id)
        channels: list[str] = []
        for statuses in requests:
            seen: set[str] = set()
            for status in statuses:
                if status.message_id is None:
                    continue
                key = self.key(marker_key(status.message_id, status.channel))
                if key not in seen:
                    seen.add(key)
                    keys.append((key, status.provider_message_id))
                    channels.append(status.channel)
        if not keys:
            return
        found = await self.verdicts.record(keys)
        for channel, marker in zip(channels, found, strict=True):
            self.accounting.verdict(channel, marker)
