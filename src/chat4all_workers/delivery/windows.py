"""Conversation windows as the router and the webhooks role share them, in Redis.

Per (channel, sending account, user), `window:{channel}:{account}:{user}` holds when the user
last wrote (`{unix ms}`, the provider's time, recorded by the webhooks role from every message
that opens a window: meta/windows.py), or `closed:{unix ms}:{closed at}` once a provider's
window error said the window is closed although this process did not know it (a user who never
wrote since this deployment began remembering). A newer user message replaces either. It lives
`delivery.window_memory_s` (30 days) from the last write: long enough to tell "closed" (wrote 2
days ago) from "never seen" (unknown: sent, and the provider's answer tells).

Before a free-form send the router asks `admit` (meta/windows.py decides): closed, the channel
FAILS `window_closed` with no call; an Instagram human agent's message 24 h to 7 days after the
user wrote goes with the HUMAN_AGENT tag. One GET per send, on the process's auto-pipeline.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import redis.asyncio as aioredis

from chat4all_workers.autopipeline import AutoPipeline, PipedScript
from chat4all_workers.errors import WindowClosedError
from chat4all_workers.frozen import frozen
from chat4all_workers.meta.events import WindowEvent
from chat4all_workers.meta.payloads import OutboundMessage
from chat4all_workers.meta.windows import decide, user_key

_CLOSED = "closed:"

# ARGV: the user's message time (ms), TTL s. A newer message opens (or refreshes) the window.
_RECORD = """
local current = redis.call('GET', KEYS[1])
local last = 0
if current then
  if string.sub(current, 1, 7) == 'closed:' then
    last = tonumber(string.match(current, '^closed:(%d+)')) or 0
  else
    last = tonumber(current) or 0
  end
end
if tonumber(ARGV[1]) > last then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
return 0
"""
# ARGV: the send's time (ms), now (ms), TTL s. Closed, unless the user wrote after the send.
_CLOSE = """
local current = redis.call('GET', KEYS[1])
local last = 0
if current then
  last = tonumber(string.match(current, '(%d+)')) or 0
end
if last > tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], 'closed:' .. string.format('%d', last) .. ':' .. ARGV[2], 'EX', ARGV[3])
return 1
"""


@frozen
class WindowState:
    age_s: float | None  # since the user's last message; None: never seen here
    closed: bool  # a provider's window error said so, and the user has not written since


class Windows:
    def __init__(
        self,
        redis: aioredis.Redis,
        pipe: AutoPipeline,
        *,
        key: Callable[[str], str],
        memory_s: int,
    ) -> None:
        self._pipe = pipe
        self._key = key
        self._memory_s = memory_s
        self._record = PipedScript(pipe, redis, _RECORD)
        self._close = PipedScript(pipe, redis, _CLOSE)

    def key(self, channel: str, account: str, user: str) -> str:
        return self._key(f"window:{channel}:{account}:{user_key(channel, user)}")

    async def state(self, channel: str, account: str, user: str) -> WindowState:
        raw = await self._pipe.execute("GET", self.key(channel, account, user))
        value = raw.decode() if isinstance(raw, bytes) else str(raw or "")
        if not value:
            return WindowState(None, closed=False)
        closed = value.startswith(_CLOSED)
        last_ms = int(value.removeprefix(_CLOSED).split(":", 1)[0] or 0)
        age = time.time() - last_ms / 1000 if last_ms else None
        return WindowState(age, closed=closed)

    async def admit(
        self, channel: str, account: str, outbound: OutboundMessage, *, human_agent: bool
    ) -> OutboundMessage | WindowClosedError:
        """The message as it may go (tagged if it must be), or why it may not (no call)."""
        if outbound.kind == "template":
            return outbound
        state = await self.state(channel, account, outbound.recipient)
        decision = decide(
            channel,
            kind=outbound.kind,
            human_agent=human_agent,
            age_s=state.age_s,
            closed=state.closed,
        )
        if not decision.send:
            return WindowClosedError(decision.reason)
        return dataclasses.replace(outbound, tag=decision.tag) if decision.tag else outbound

    async def close(self, channel: str, account: str, user: str, *, sent_at_s: float) -> None:
        """A provider's window error for a send made at `sent_at_s`: closed, unless the user
        wrote since."""
        now_ms = int(time.time() * 1000)
        await self._close(
            keys=[self.key(channel, account, user)],
            args=[int(sent_at_s * 1000), now_ms, self._memory_s],
        )

    async def record(self, events: Sequence[WindowEvent]) -> None:
        """Users' messages (the webhooks role): each opens or refreshes its window."""
        if not events:
            return
        found = await self._record.many(
            [
                (
                    [self.key(e.channel, e.account, e.user)],
                    [int(e.at.timestamp() * 1000), self._memory_s],
                )
                for e in events
            ]
        )
        for result in found:
            if isinstance(result, Exception):
                raise result
