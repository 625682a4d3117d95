"""Calibration: ECE of calibrated and deliberately over-confident probabilities and probes."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from probes.robustness import THRESHOLDS, CheckContext, calibration


def logistic_data(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return features and labels drawn from a logistic model: a logistic probe is well specified."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    logits = 2.0 * X[:, 0] - 1.0 * X[:, 1]
    return X, (rng.random(n) < 1 / (1 + np.exp(-logits))).astype(int)


def test_ece_of_a_hand_computed_case() -> None:
    p = np.array([0.05, 0.05, 0.95, 0.95])
    y = np.array([0, 1, 1, 1])
    table = calibration.reliability(p, y)
    # bin 0: predicted 0.05, observed 0.5; bin 9: predicted 0.95, observed 1.0; 2 rows each
    assert table.ece == pytest.approx((2 * 0.45 + 2 * 0.05) / 4)
    assert [b["count"] for b in table.bins] == [2, 0, 0, 0, 0, 0, 0, 0, 0, 2]
    assert table.bins[1]["mean_predicted"] is None
    assert calibration.reliability(np.array([1.0]), np.array([1])).bins[-1]["count"] == 1


def test_calibrated_probabilities_have_small_ece_and_overconfident_ones_large() -> None:
    rng = np.random.default_rng(0)
    p = rng.random(5000)
    y = (rng.random(5000) < p).astype(int)
    calibrated = calibration.bootstrap_ece(p, y, n_boot=200)
    logit = np.log(p / (1 - p))
    overconfident = calibration.bootstrap_ece(1 / (1 + np.exp(-5 * logit)), y, n_boot=200)
    assert calibrated.value < 0.03 and calibrated.high < 0.05
    assert overconfident.value > 0.15 and overconfident.low > 0.1


def test_a_well_specified_probe_passes_and_a_scaled_one_fails(synthetic_context) -> None:
    ctx = synthetic_context(*logistic_data(1000, 5))
    calibrated = calibration.run(ctx, THRESHOLDS)
    assert calibrated.verdict == "pass" and calibrated.figure.value < 0.07
    key = ("logistic", ctx.best_hook)
    probe = copy.deepcopy(ctx.sweep.fitted[key])
    probe.coef_, probe.intercept_ = probe.coef_ * 10, probe.intercept_ * 10  # logits x 10
    ctx.sweep.fitted[key] = probe
    overconfident = calibration.run(ctx, THRESHOLDS)
    assert overconfident.verdict == "fail" and overconfident.figure.value > 0.15


def test_too_few_examples_is_skipped_with_the_count_needed(synthetic_context) -> None:
    result = calibration.run(synthetic_context(*logistic_data(40, 3)), THRESHOLDS)
    assert result.verdict == "skipped" and "needs at least 20 held-out examples" in result.reason


def test_real_sentiment_reliability_diagram(real_context: CheckContext) -> None:
    result = calibration.run(real_context, THRESHOLDS)
    bins = result.details["reliability"]
    assert sum(b["count"] for b in bins) == len(real_context.split.test) == result.details["n_test"]
    assert 0 <= result.figure.value <= 1 and result.figure.low < result.figure.high
    expected = "pass" if result.figure.value <= THRESHOLDS["calibration_ece"].value else "fail"
    assert result.verdict == expected
    assert result.forward_seconds == 0
    assert calibration.run(real_context, THRESHOLDS).figure == result.figure  # deterministic
