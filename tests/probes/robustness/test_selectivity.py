"""Selectivity against control tasks: synthetic planted concepts and the real backbone."""

from __future__ import annotations

import numpy as np
import pytest

from probes.robustness import THRESHOLDS, CheckContext, selectivity


def planted(n: int, d: int, signal: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return Gaussian features with ``signal`` added along one direction for label 1."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    X = rng.normal(size=(n, d))
    X[:, 0] += signal * y
    return X, y


def test_control_scores_chance_while_the_real_probe_does_not(synthetic_context) -> None:
    ctx = synthetic_context(*planted(400, 20, signal=3.0))
    result = selectivity.run(ctx, THRESHOLDS)
    assert result.details["real_auroc"] > 0.9
    assert abs(result.details["control_auroc"] - 0.5) < 0.08
    assert all(abs(a - 0.5) < 0.15 for a in result.details["control_auroc_per_permutation"])
    assert result.verdict == "pass"
    assert result.figure.low < result.figure.value < result.figure.high
    # the control probe memorises its noisy training labels: the capacity Hewitt & Liang control
    assert result.details["control_train_auroc"] > 0.6


def test_a_concept_absent_from_the_features_is_not_selective(synthetic_context) -> None:
    X, y = planted(400, 20, signal=0.0)
    result = selectivity.run(synthetic_context(X, y), THRESHOLDS)
    assert abs(result.figure.value) < 0.12
    assert result.verdict == "fail"


def test_deterministic_given_the_seed(synthetic_context) -> None:
    ctx = synthetic_context(*planted(200, 10, signal=1.0))
    first, again = selectivity.run(ctx, THRESHOLDS), selectivity.run(ctx, THRESHOLDS)
    assert first.figure == again.figure and first.details == again.details


def test_too_few_examples_is_skipped_with_the_count_needed(synthetic_context) -> None:
    result = selectivity.run(synthetic_context(*planted(40, 5, signal=2.0)), THRESHOLDS)
    assert result.verdict == "skipped"
    assert "needs at least 10" in result.reason and "has 6" in result.reason


def test_real_sentiment_is_selective(real_context: CheckContext) -> None:
    result = selectivity.run(real_context, THRESHOLDS)
    assert result.verdict == "pass", result.reason
    assert abs(result.details["control_auroc"] - 0.5) < 0.1
    assert result.details["real_auroc"] == pytest.approx(real_context.sweep.best().auroc.value)
    assert len(result.details["layers"]) == len(real_context.features)
    assert result.forward_seconds == 0 and result.fit_seconds > 0
