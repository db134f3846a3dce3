"""The `faults` tests' stack: Kafka, PostgreSQL, Redis and S3 of their own (tests/own_stack.py).

These tests stop and start each service for real. On the shared stack that would break every
test running beside them, so they used to run alone after the rest of the suite (about 110 s of
`make test`). On a stack of their own they run beside the rest: all of them on one pytest-xdist
worker (group `faults`, `make test` runs `--dist loadgroup`), one at a time, as one stack can
only be broken by one test at once.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.stack import StackEndpoints
from tests.own_stack import OwnStack, stack_running


@pytest.fixture(scope="session")
def own_stack(request: pytest.FixtureRequest) -> Iterator[OwnStack]:
    """Started on first use (about 5 s), stopped and removed at the end of the session; its logs
    and data are kept when a test failed."""
    with stack_running(keep=lambda: request.session.testsfailed > 0) as running:
        yield running


@pytest.fixture(scope="session")
def stack(own_stack: OwnStack) -> StackEndpoints:
    """Every fixture these tests use (the deployment's topics, database, prefix, bucket) is made
    on their own stack, never on the shared one."""
    return own_stack.endpoints
