"""One (message, channel) on its way, and how a round of it ended.

A `Send` survives its throttled and paused rounds: the router makes it once per channel of a
record, and each round (wait for a slot, claim the lease, try) tells the router what the channel
learned (`Verdict`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from chat4all_workers.delivery.failures import ChannelFailure
from chat4all_workers.delivery.provider_index import MessageRef
from chat4all_workers.errors import AccountError, ThrottledError
from chat4all_workers.formats.message import Message
from chat4all_workers.meta.payloads import OutboundMessage

if TYPE_CHECKING:
    from chat4all_workers.delivery.lanes import Lane


class Verdict(enum.Enum):
    """How a claimed send ended, as far as the channel's state cares."""

    SENT = "sent"  # accepted: the account works
    REJECTED = "rejected"  # refused this message: the account works
    THROTTLED = "throttled"  # too fast: the account works; wait and send again
    ACCOUNT = "account"  # the account does not work: pause, hold, send again
    HELD = "held"  # the channel paused while this send waited: nothing sent, hold it
    OTHER = "other"  # done without a verdict on the account (transient, duplicate, busy)


@dataclass
class Send:
    """One (message, channel) on its way: what survives its throttled and paused rounds."""

    message: Message
    channel: str
    lane: Lane
    key: str  # its dedup marker
    origin: str  # the record's "{topic}:{partition}:{offset}", for `failed:` markers
    outbound: OutboundMessage
    failures: list[ChannelFailure]  # the record's, shared by its channels
    # Attempts spent before this record (a copy published again after a failure the provider
    # reported later: formats/resend.py); they count against router.max_attempts.
    prior_attempts: int = 0
    throttles: int = 0
    # The lane's `pause.resumes` when this send last got an account-class answer.
    refused_at_resume: int | None = None
    throttled_since: float | None = None
    last_error: ThrottledError | AccountError | None = field(default=None, repr=False)

    @property
    def ref(self) -> MessageRef:
        return MessageRef(self.message.message_id, self.message.conversation_id)
