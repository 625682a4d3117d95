"""`audit bench --only screening` in quick mode on the real MiniLM and the session's bank."""

from __future__ import annotations

import pytest

from audit.bench import BENCHMARKS, BenchContext
from audit.bench_screening import bench_screening
from audit.screening.normalize import canonical_text


@pytest.fixture(scope="module")
def ctx(backbone, sentiment_small):
    return BenchContext(backbone, list(sentiment_small.texts), batch_size=32, repeats=2, quick=True)


def test_screening_benchmark_measures_compute_and_log_against_the_forward(ctx, screen_bank) -> None:
    assert BENCHMARKS["screening"] is bench_screening
    compute, log = bench_screening(ctx)
    assert compute.benchmark == log.benchmark == "screening"
    assert compute.goal == 0.01 and not compute.higher_is_better
    assert compute.notes["bank"] == screen_bank.version  # the catalog's latest bank
    assert compute.ours > 0 and compute.baseline > 0
    assert compute.ratio < 1.0  # far below in practice; the bench report states the figure
    # Short reviews fit one window: each is decided from its forward, unless it has a look-alike
    # form to screen too (NFKC changes it).
    plain = sum(canonical_text(t) is t for t in ctx.texts[:64])
    assert plain >= 60 and compute.notes["decided_in_forward"] == plain
    # One append per batch per repeat, and the untimed first batch's.
    assert log.notes["records_appended"] == 64 * ctx.repeats + 32
    assert log.notes["chain_verified"] is True
