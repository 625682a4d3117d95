"""Causal use on the real MiniLM: the resume path is exact, the real direction matters, a dud fails."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest

from probes import Backbone
from probes.robustness import THRESHOLDS, CheckContext, causal
from probes.robustness.core import Stopwatch
from probes.robustness.intervene import (
    CLEAN,
    choose_layer,
    downstream_effects,
    held_out_tokens,
    identity,
    layer_probes,
    project_out,
    resume_pooled,
    score_pooled,
)
from probes.sweep import SweepResult


@pytest.fixture(scope="module")
def result(real_context: CheckContext):
    return causal.run(real_context, THRESHOLDS)


def test_identity_edit_equals_full_forward(real_context: CheckContext, backbone: Backbone) -> None:
    # Layer 0, so every later block runs in the resumed forward; a few texts keep it quick.
    ctx = dataclasses.replace(real_context, batch_size=8)
    texts = [ctx.dataset.texts[i] for i in ctx.split.test[:12]]
    tokens = backbone.extract(texts, ["blocks.0.hook_resid_post"], ("tokens",), progress=False)
    later = backbone.resid_hooks()[1:]
    pooled = resume_pooled(
        ctx, 0, tokens.tokens["blocks.0.hook_resid_post"], {CLEAN: identity}, later, Stopwatch()
    )
    for hook in later:
        full = ctx.features[hook][ctx.split.test[:12]]  # stored by the sweep's full forward
        np.testing.assert_allclose(pooled[CLEAN][hook], full, atol=2e-5, err_msg=hook)


def test_zero_direction_changes_nothing_downstream(real_context: CheckContext) -> None:
    # Projecting out a zero vector is the identity: any difference would be the resume path's.
    ctx = real_context
    choice = choose_layer(ctx)
    assert choice is not None
    watch = Stopwatch()
    probes = layer_probes(ctx, choice.downstream, watch)
    tokens = held_out_tokens(ctx, choice.hook_name, watch)
    edits = {CLEAN: identity, "zero": project_out(np.zeros(ctx.backbone.d_model))}
    pooled = resume_pooled(ctx, choice.layer, tokens, edits, choice.downstream, watch)
    scores = score_pooled(probes, pooled)
    for hook in choice.downstream:
        np.testing.assert_array_equal(pooled["zero"][hook], pooled[CLEAN][hook])
    rows = downstream_effects(scores[CLEAN], scores["zero"], ctx.labels[ctx.split.test])
    assert all(abs(row["auroc_drop"]) <= 1e-6 for row in rows)
    assert watch.forward_seconds > 0


def test_real_sentiment_direction_is_used_downstream(result) -> None:
    # Measured (300 reviews, seed 0): layer 4 -> layer 5 drop 0.077 [0.038, 0.127]; random
    # direction -0.002.
    assert result.verdict == "pass", result.reason
    assert result.figure is not None
    assert result.figure.low <= result.figure.value <= result.figure.high
    assert result.figure.value >= THRESHOLDS["causal_effect"].value
    control = result.details["random_direction"]
    assert control["largest_auroc_drop"] < result.figure.value / 3
    # The real direction moves later probes' scores far more than a random one of the same norm.
    for real, rand in zip(result.details["projected"], control["per_layer"], strict=True):
        assert real["mean_abs_score_change"] > 5 * rand["mean_abs_score_change"], (real, rand)
    assert result.details["present_at_layer"] is True
    # Adding the direction pushes later probes towards the positive class, subtracting away.
    steering = result.details["steering"]
    for row_minus, row_plus in zip(
        steering["-3"]["per_layer"], steering["+3"]["per_layer"], strict=True
    ):
        assert row_minus["mean_score_shift"] < 0 < row_plus["mean_score_shift"]
    assert result.forward_seconds > 0 and result.fit_seconds > 0
    assert result.as_dict()["threshold"]["name"] == "causal_effect"


def test_present_but_unused_direction_fails_with_reason(
    real_context: CheckContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Swap the layer-L probe for one pointing along a random direction: the sweep still says the
    # concept is present at L, but removing that direction changes nothing downstream.
    ctx = real_context
    choice = choose_layer(ctx)
    assert choice is not None
    monkeypatch.setattr(causal, "STEER_SCALES", ())  # steering plays no part in the verdict
    dud = copy.deepcopy(ctx.sweep.fitted[("logistic", choice.hook_name)])
    random_direction = np.random.default_rng(3).standard_normal(dud.coef_.shape[1])
    dud.coef_ = (random_direction / np.linalg.norm(random_direction))[None, :]
    fitted = {**ctx.sweep.fitted, ("logistic", choice.hook_name): dud}
    out = causal.run(
        dataclasses.replace(ctx, sweep=SweepResult(ctx.sweep.scores, fitted)), THRESHOLDS
    )
    assert out.verdict == "fail"
    assert out.reason.startswith(f"present at layer {choice.layer} but unused downstream")


def test_too_few_examples_is_skipped_with_the_count_needed(real_context: CheckContext) -> None:
    ctx = real_context
    rows = np.concatenate([ctx.split.test[ctx.labels[ctx.split.test] == k][:5] for k in (0, 1)])
    out = causal.run(dataclasses.replace(ctx, split=ctx.split._replace(test=rows)), THRESHOLDS)
    assert out.verdict == "skipped"
    assert f"needs at least {causal.MIN_PER_CLASS} examples of each class" in out.reason


def test_last_best_layer_falls_back_to_an_earlier_one(real_context: CheckContext) -> None:
    ctx = real_context
    last = ctx.backbone.n_layers - 1
    scores = [
        dataclasses.replace(s, auroc=dataclasses.replace(s.auroc, value=0.99))
        if s.layer == last
        else s
        for s in ctx.sweep.scores
    ]
    choice = choose_layer(dataclasses.replace(ctx, sweep=SweepResult(scores, ctx.sweep.fitted)))
    assert choice is not None and choice.layer < last
    assert choice.downstream[-1] == f"blocks.{last}.hook_resid_post"
    assert f"the best layer ({last}) has no later layer" in choice.note
    best_earlier = max(
        (s for s in ctx.sweep.scores if s.probe == "logistic" and s.layer < last),
        key=lambda s: (round(s.auroc.value, 6), -s.layer),
    )
    assert choice.layer == best_earlier.layer
