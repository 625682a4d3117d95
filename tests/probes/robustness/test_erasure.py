"""Erasure on the real MiniLM: LEACE really removes linear decodability, and the check can fail."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from probes.pooling import pool
from probes.robustness import THRESHOLDS, CheckContext, erasure
from probes.robustness.core import CheckResult, Stopwatch
from probes.robustness.intervene import choose_layer, held_out_tokens


@pytest.fixture(scope="module")
def result(real_context: CheckContext) -> CheckResult:
    return erasure.run(real_context, THRESHOLDS)


def test_leace_removes_linear_decodability(result: CheckResult) -> None:
    # Measured (300 reviews, seed 0, layer 4): fresh probe after LEACE 0.495 [0.363, 0.621],
    # before it 0.825; the layer-5 probe's AUROC drops by 0.115 [0.037, 0.199].
    assert result.verdict == "pass", result.reason
    assert result.figure is not None
    assert result.details["auroc_before"]["value"] > 0.75
    assert abs(result.figure.value - 0.5) < 0.1, result.figure
    assert result.figure.low <= result.figure.value <= result.figure.high
    assert result.figure.value <= THRESHOLDS["erasure_chance"].value
    assert result.details["eraser_rank"] == 1  # one binary concept: a rank-1 edit
    assert result.details["downstream"]["largest_auroc_drop"]["value"] > 0.02
    assert result.forward_seconds > 0 and result.fit_seconds > 0


def test_erased_training_classes_share_one_mean(real_context: CheckContext) -> None:
    # LEACE's guarantee on the rows it was fitted on: equal class means, so no linear signal.
    ctx = real_context
    choice = choose_layer(ctx)
    assert choice is not None
    train = ctx.split.train
    x, y = ctx.features[choice.hook_name][train], ctx.labels[train]
    gap_before = x[y == 1].mean(0) - x[y == 0].mean(0)
    erased = erasure.erase(erasure.fit_eraser(x, y), x)
    gap = erased[y == 1].mean(0) - erased[y == 0].mean(0)
    assert np.abs(gap).max() < 1e-6 < np.abs(gap_before).max()


def test_per_token_erasure_erases_the_mean_pooled_vector(real_context: CheckContext) -> None:
    # The eraser is affine, so erasing every token then mean-pooling equals erasing the pooled
    # vector: the downstream reading and the sanity reading erase the same thing.
    ctx = real_context
    choice = choose_layer(ctx)
    assert choice is not None
    tokens = held_out_tokens(ctx, choice.hook_name, Stopwatch())
    eraser = erasure.fit_eraser(
        ctx.features[choice.hook_name][ctx.split.train], ctx.labels[ctx.split.train]
    )
    acts, mask = tokens.padded(range(8))
    per_token = pool(erasure.as_float32(eraser)(acts), mask, "mean").numpy()
    pooled = pool(acts, mask, "mean").numpy()
    np.testing.assert_allclose(per_token, erasure.erase(eraser, pooled), atol=1e-4)
    assert ctx.pooling == "mean"


def test_an_eraser_that_misses_the_concept_fails(
    real_context: CheckContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Sabotage the eraser (fit it on shuffled labels): it erases nothing that matters, the
    # concept stays decodable, and the verdict must turn to fail.
    fit = erasure.fit_eraser

    def sham(features: np.ndarray, labels: np.ndarray):
        return fit(features, np.random.default_rng(0).permutation(labels))

    monkeypatch.setattr(erasure, "fit_eraser", sham)
    out = erasure.run(real_context, THRESHOLDS)
    assert out.verdict == "fail"
    assert "still decodes the concept after LEACE" in out.reason


def test_too_few_examples_is_skipped_with_the_count_needed(real_context: CheckContext) -> None:
    ctx = real_context
    rows = np.concatenate([ctx.split.train[ctx.labels[ctx.split.train] == k][:8] for k in (0, 1)])
    out = erasure.run(dataclasses.replace(ctx, split=ctx.split._replace(train=rows)), THRESHOLDS)
    assert out.verdict == "skipped"
    assert "needs at least 20 examples of each class" in out.reason
