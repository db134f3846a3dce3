"""The metrics' tables: every help text and every histogram's buckets belong to a metric."""

from __future__ import annotations

from aioprometheus.collectors import Histogram

from chat4all_workers.observability.metrics import _BUCKETS, _HELP, Metrics


def test_every_table_row_is_a_declared_metric() -> None:
    collectors = Metrics().registry.get_all()
    assert sorted(c.name for c in collectors) == sorted(_HELP)
    assert sorted(c.name for c in collectors if isinstance(c, Histogram)) == sorted(_BUCKETS)
