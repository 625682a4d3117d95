"""The load driver's bookkeeping: percentiles, summaries, leak and acknowledgement checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from audit.loadgen import (
    LoadError,
    LoadResult,
    TenantTarget,
    Workload,
    _acknowledge,
    _check_predict,
    percentile,
)

TENANT = TenantTarget("t_a", "ak_a", "h_a", ("neg-0", "pos-0"))


@pytest.mark.parametrize("q", [0, 1, 37.5, 50, 95, 99, 100])
def test_percentile_matches_numpy_linear(q: float) -> None:
    values = [float(v) for v in np.random.default_rng(0).exponential(100.0, size=57)]
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_edges() -> None:
    assert math.isnan(percentile([], 50))
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError, match="in \\[0, 100\\]"):
        percentile([1.0], 101)


def test_summary_counts_5xx_and_rates() -> None:
    result = LoadResult(concurrency=4, n_tenants=2, duration_s=2.0, n_requests=10)
    result.status_counts.update({200: 7, 500: 2, 503: 1})
    result.latencies_ms = [float(v) for v in range(1, 11)]
    summary = result.summary()
    assert (result.n_5xx, result.n_ok) == (3, 7)
    assert summary["requests_per_s"] == 5.0
    assert summary["latency_ms"]["p50"] == 5.5
    assert summary["status_counts"] == {"200": 7, "500": 2, "503": 1}


def test_predict_with_foreign_head_or_labels_is_a_leak() -> None:
    result = LoadResult(concurrency=1, n_tenants=1)
    decision = {"decision_id": "dec_1", "decision": "allow"}
    own = {"head_id": "h_a", "results": [{"label": "pos-0", "screening": decision}]}
    assert _check_predict(own, TENANT, 1, result) == [decision]
    assert not result.leaks
    foreign = {
        "head_id": "h_b",
        "results": [{"label": "pos-1", "scores": {"neg-1": 0.2, "pos-1": 0.8}}],
    }
    _check_predict(foreign, TENANT, 1, result)
    assert len(result.leaks) == 3  # the head, the label, the scores


def test_a_decision_acknowledged_twice_is_a_duplicate() -> None:
    result = LoadResult(concurrency=1, n_tenants=1)
    _acknowledge([{"decision_id": "dec_1"}, {"decision_id": "dec_1"}], "t_a", result)
    assert result.decisions == {"dec_1": "t_a"} and result.duplicates == ["dec_1"]


def test_an_unbounded_workload_is_refused() -> None:
    with pytest.raises(LoadError, match="Bound the run"):
        Workload("http://x", [TENANT], ["text"], duration_s=None, max_requests=None)
