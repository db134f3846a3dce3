"""A record published again after the provider failed its send later (by webhook), for a reason
that is not final (a throttle, a transient failure): the headers that carry its history, so the
router spends the attempts and deadlines that are left, not new ones (the original's bytes and
key are kept: order, dedup and tracing read them as before).

- `c4a.attempts`: the attempts the message's channel has spent so far;
- `c4a.throttled_since`: Unix seconds of its first throttle, for `router.throttle_deadline_s`;
- `c4a.resent_from`: the record it is a copy of, "{topic}:{partition}:{offset}".
"""

from __future__ import annotations

from collections.abc import Sequence

from chat4all_workers.frozen import frozen
from chat4all_workers.kafka.records import ConsumedRecord

ATTEMPTS = "c4a.attempts"
THROTTLED_SINCE = "c4a.throttled_since"
RESENT_FROM = "c4a.resent_from"
_OURS = (ATTEMPTS, THROTTLED_SINCE, RESENT_FROM)


@frozen
class History:
    attempts: int = 0
    throttled_since: float | None = None  # Unix seconds


def history(record: ConsumedRecord) -> History:
    """What a record's headers say it has been through (nothing, for a first publication)."""
    attempts = record.header(ATTEMPTS)
    since = record.header(THROTTLED_SINCE)
    return History(
        attempts=int(attempts) if attempts and attempts.isascii() and attempts.isdigit() else 0,
        throttled_since=_float(since),
    )


def resend_headers(
    original: Sequence[tuple[str, bytes]],
    *,
    attempts: int,
    throttled_since: float | None,
    origin: str,
) -> list[tuple[str, bytes]]:
    """The original's headers (its trace context among them), with the history updated."""
    headers = [(k, v) for k, v in original if k not in _OURS]
    headers.append((ATTEMPTS, str(attempts).encode()))
    if throttled_since is not None:
        headers.append((THROTTLED_SINCE, f"{throttled_since:.3f}".encode()))
    headers.append((RESENT_FROM, origin.encode()))
    return headers


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None
