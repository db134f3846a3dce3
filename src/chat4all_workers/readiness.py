"""What `/readyz` answers: whether this process serves, and a JSON body that says why (or why not).

It reads self-descriptions (STYLE 11) and decides nothing else: the supervisor's `stats()` per
child, a probe of each opened dependency, the Kafka breaker's state, the accounts directory's
(`accounts_directory`, when a role needs it), and the sections roles publish through
`RoleContext.publish` (the router's sending accounts, for instance). Ready means: not stopping,
every dependency answers, every role runs and reported ready. A published section, like the
router's `accounts`, is information for operators and `chat4all-workers status`; it never makes
the process unready (a paused account leaves the others, and the rest of the process, serving).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from chat4all_workers.frozen import frozen
from chat4all_workers.resources import Resources


@frozen
class ChildStats:
    """One supervised role, as the supervisor describes it."""

    role: str
    state: str  # stopped | running | backing_off | failed
    ready: bool
    restart: str
    restarts_total: int
    last_error: str | None
    # Seconds from the stop request to the child's end (0 if it had ended before); None while
    # it runs. `cancelled`: still running at the hand-back deadline, so it was cancelled.
    stop_s: float | None = None
    cancelled: bool = False


class Readiness:
    """`await readiness()` -> (ready, body); the operations server calls it per request."""

    def __init__(
        self,
        *,
        children: Callable[[], Sequence[ChildStats]],
        published: Callable[[], Mapping[str, Any]],
        resources: Resources | None,
        stopping: asyncio.Event,
    ) -> None:
        self._children = children
        self._published = published
        self._resources = resources
        self._stopping = stopping

    async def __call__(self) -> tuple[bool, dict[str, Any]]:
        resources = self._resources
        dependencies = await resources.probe() if resources is not None else {}
        roles = {
            child.role: {
                "state": child.state,
                "ready": child.ready,
                "restarts": child.restarts_total,
                "last_error": child.last_error,
            }
            for child in self._children()
        }
        ready = (
            not self._stopping.is_set()
            and all(dependencies.values())
            and all(r["ready"] and r["state"] == "running" for r in roles.values())
        )
        body: dict[str, Any] = {"roles": roles, "dependencies": dependencies}
        if resources is not None and resources.producer is not None:
            body["circuit_breakers"] = {"kafka": resources.producer.breaker.stats().state}
        if resources is not None and resources.directory is not None:
            body["accounts_directory"] = resources.directory.stats()
        body.update(self._published())
        return ready, body
