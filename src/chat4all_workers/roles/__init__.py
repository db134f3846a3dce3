"""The role registry: one line per role. A role is one module in this package."""

from __future__ import annotations

from chat4all_workers.roles import backfill, gc, merge, mocks, outbox, router, status_updater
from chat4all_workers.roles.base import RoleSpec

REGISTRY: dict[str, RoleSpec] = {
    spec.name: spec
    for spec in (
        router.ROLE,
        status_updater.ROLE,
        outbox.ROLE,
        backfill.ROLE,
        merge.ROLE,
        gc.ROLE,
        mocks.WHATSAPP,
        mocks.INSTAGRAM,
    )
}
