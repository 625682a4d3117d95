"""Geometry: a seeded, subsampled UMAP projection coloured by label."""

from __future__ import annotations

import numpy as np
import pytest

from probes.robustness import THRESHOLDS, CheckContext, CheckResult, geometry


def planted(n: int, d: int, signal: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return Gaussian features with ``signal`` added along one direction for label 1."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    X = rng.normal(size=(n, d))
    X[:, 0] += signal * y
    return X, y


# UMAP's numba functions compile on the first projection of each process (15-50 s on 2 busy
# cores; numba cannot cache them), so the tests that project are marked slow.
slow = pytest.mark.slow


@pytest.fixture(scope="module")
def separated(synthetic_context) -> CheckContext:
    return synthetic_context(*planted(240, 10, signal=8.0))


@slow
def test_projection_has_one_point_per_row_and_shows_separated_classes(
    separated: CheckContext,
) -> None:
    result = geometry.run(separated, THRESHOLDS)
    details = result.details
    assert result.verdict == "info" and result.threshold is None
    assert len(details["x"]) == len(details["y"]) == len(details["label"]) == 240
    assert details["index"] == list(range(240))
    assert result.figure.value > 0.9 and details["chance_agreement"] == pytest.approx(0.5)
    assert details["silhouette"] > 0.3


@slow
def test_projection_is_deterministic_given_the_seed() -> None:
    X, _ = planted(120, 8, signal=2.0)
    first, again = geometry.project(X, seed=3), geometry.project(X, seed=3)
    np.testing.assert_array_equal(first, again)
    assert first.shape == (120, 2)
    assert not np.array_equal(first, geometry.project(X, seed=4))


@slow
def test_large_datasets_are_subsampled_with_row_indices(
    separated: CheckContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(geometry, "MAX_POINTS", 100)
    result = geometry.run(separated, THRESHOLDS)
    index = result.details["index"]
    assert len(index) == len(result.details["x"]) == 100 == len(set(index))
    assert result.details["label"] == separated.labels[index].tolist()
    assert geometry.run(separated, THRESHOLDS).details["x"] == result.details["x"]


def test_too_few_examples_is_skipped_with_the_count_needed(synthetic_context) -> None:
    result = geometry.run(synthetic_context(*planted(20, 3, signal=2.0)), THRESHOLDS)
    assert result.verdict == "skipped" and "needs at least 30 examples" in result.reason


@slow
def test_real_sentiment_projection(real_context: CheckContext) -> None:
    result: CheckResult = geometry.run(real_context, THRESHOLDS)
    details = result.details
    assert len(details["x"]) == real_context.dataset.n_samples
    assert details["label"] == real_context.labels[details["index"]].tolist()
    assert np.isfinite(details["x"]).all() and np.isfinite(details["y"]).all()
    assert 0 <= result.figure.value <= 1
    assert result.forward_seconds == 0
