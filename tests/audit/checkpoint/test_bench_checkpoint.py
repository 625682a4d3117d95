"""`audit bench --only checkpoint_audit` in quick mode on the real MiniLM."""

from __future__ import annotations

import pytest

from audit.bench import BENCHMARKS, BenchContext
from audit.bench_checkpoint import bench_checkpoint_audit


@pytest.mark.slow
def test_checkpoint_audit_benchmark_times_a_three_concept_audit(backbone) -> None:
    assert BENCHMARKS["checkpoint_audit"] is bench_checkpoint_audit
    ctx = BenchContext(backbone, ["unused"], batch_size=32, repeats=1, quick=True)
    (figure,) = bench_checkpoint_audit(ctx)
    assert figure.baseline == 120.0 and figure.goal == 1.0 and not figure.higher_is_better
    assert figure.ours > 0
    notes = figure.notes
    assert notes["concepts"] == ["sentiment", "truth", "toxicity"] and notes["n_samples"] == 80
    # parity on MiniLM (30 checks) + per concept: 3 presence, selectivity, 3 x 2 drift
    assert notes["checks"] == 30 + 3 * (3 + 1 + 6)
    assert set(notes["group_seconds"]) == {
        "parity",
        "concept:sentiment",
        "concept:truth",
        "concept:toxicity",
    }
