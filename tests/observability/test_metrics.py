"""The metrics' tables: every help text and every histogram's buckets belong to a metric; a
histogram's series counts as aioprometheus's own would."""

from __future__ import annotations

import math

from aioprometheus import histogram
from aioprometheus.collectors import Histogram
from aioprometheus.renderer import render

from chat4all_workers.observability.metrics import _BUCKETS, _HELP, Buckets, Metrics


def test_every_table_row_is_a_declared_metric() -> None:
    collectors = Metrics().registry.get_all()
    assert sorted(c.name for c in collectors) == sorted(_HELP)
    assert sorted(c.name for c in collectors if isinstance(c, Histogram)) == sorted(_BUCKETS)


def test_a_series_counts_every_observation_as_aioprometheus_does() -> None:
    bounds = _BUCKETS["worker_processing_duration_seconds"]
    theirs, ours = histogram.Histogram(*bounds), Buckets(*bounds)
    # On each bound, between, below the first, past the last, +Inf and NaN (in no bucket).
    values = [*bounds, *(b * 0.999 for b in bounds), *(b * 1.001 for b in bounds)]
    values += [-1.0, 0.0, 1e9, math.inf, math.nan]
    for value in values:
        theirs.observe(value)
        ours.observe(value)

    assert ours.buckets == dict(theirs.buckets)
    assert ours.observations == theirs.observations == len(values)
    assert math.isnan(ours.sum)
    assert math.isnan(theirs.sum)


def test_a_histogram_renders_cumulative_buckets() -> None:
    metrics = Metrics()
    for seconds in (0.001, 0.02, 0.02, 7.0):
        metrics.processing_duration.observe({"role": "router"}, seconds)

    text = render(metrics.registry, [])[0].decode()

    def bucket(le: str) -> str:
        return f'worker_processing_duration_seconds_bucket{{le="{le}",role="router"}}'

    assert f"{bucket('0.005')} 1" in text
    assert f"{bucket('0.01')} 1" in text
    assert f"{bucket('0.025')} 3" in text
    assert f"{bucket('5.0')} 3" in text
    assert f"{bucket('10.0')} 4" in text
    assert f"{bucket('+Inf')} 4" in text
    assert 'worker_processing_duration_seconds_count{role="router"} 4' in text
