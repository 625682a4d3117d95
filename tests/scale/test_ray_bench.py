"""The Ray benchmarks (``audit bench --only ray_extraction --only ray_serve``) on the session's
local Ray cluster, in quick mode: each figure measured, positive, and a ratio of its own two."""

from __future__ import annotations

from typing import Any

import pytest

from audit.bench import BENCHMARKS, RAY_BENCHMARKS, BenchContext

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", RAY_BENCHMARKS)
def test_ray_benchmark_quick_reports_ratios(
    name: str, ray_cluster: Any, backbone: Any, sentiment_small: Any, screen_bank: Any
) -> None:
    ctx = BenchContext(
        backbone, list(sentiment_small.texts[:48]), batch_size=32, repeats=2, quick=True
    )
    figures = BENCHMARKS[name](ctx)
    assert figures and {f.benchmark for f in figures} == {name}
    for f in figures:
        assert f.ours > 0 and f.baseline > 0, f
        assert f.ratio == pytest.approx(f.ours / f.baseline)
    assert ray_cluster.is_initialized()  # the session's cluster is reused, not shut down
