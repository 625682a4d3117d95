"""Erasure: after LEACE at layer L no linear probe decodes the concept, and later layers lose it.

LEACE (Belrose et al. 2023, the ``concept-erasure`` package) is the least-squares affine edit
after which no linear classifier beats a constant on the data it was fitted on. Two readings:

1. sanity: a fresh probe fitted on erased training features and scored on erased held-out
   features must fall to chance (the headline; it tests the probe and the eraser together);
2. downstream: the eraser applied to every held-out token at L, the forward resumed, and the
   later layers' probes scored as in the causal-use check.
"""

from __future__ import annotations

import numpy as np
import torch
from concept_erasure import LeaceEraser, LeaceFitter

from probes.estimators import LogisticProbe
from probes.metrics import auroc, bootstrap_auroc, bootstrap_auroc_difference
from probes.robustness.causal import MIN_PER_CLASS
from probes.robustness.core import (
    CheckContext,
    CheckResult,
    Stopwatch,
    Threshold,
)
from probes.robustness.intervene import (
    CLEAN,
    downstream_effects,
    held_out_tokens,
    identity,
    intervention_layer_or_skip,
    layer_probes,
    resume_pooled,
    score_pooled,
)

CHECK = "erasure"
TITLE = "Erasure: a fresh probe after LEACE at layer L is at chance"


def fit_eraser(features: np.ndarray, labels: np.ndarray) -> LeaceEraser:
    """Return the LEACE eraser of binary ``labels`` from ``features`` [n, d], fitted in float64."""
    # float64: the eraser whitens with the inverse square root of the covariance, whose small
    # eigenvalues lose their precision in float32.
    x = torch.from_numpy(np.asarray(features, dtype=np.float64))
    z = torch.from_numpy(np.asarray(labels, dtype=np.float64)).unsqueeze(1)
    return LeaceFitter.fit(x, z).eraser


def erase(eraser: LeaceEraser, features: np.ndarray) -> np.ndarray:
    """Return ``features`` [n, d] with the eraser applied (computed in float64)."""
    return eraser(torch.from_numpy(np.asarray(features, dtype=np.float64))).numpy()


def as_float32(eraser: LeaceEraser) -> LeaceEraser:
    """Return the eraser in float32, the dtype of the activations the backbone resumes from."""
    bias = None if eraser.bias is None else eraser.bias.float()
    return LeaceEraser(eraser.proj_left.float(), eraser.proj_right.float(), bias)


def run(ctx: CheckContext, thresholds: dict[str, Threshold]) -> CheckResult:
    """Return the erasure result: held-out AUROC of a fresh probe on LEACE-erased features."""
    watch = Stopwatch()
    choice = intervention_layer_or_skip(ctx, CHECK, TITLE, MIN_PER_CLASS)
    if isinstance(choice, CheckResult):
        return choice
    layer, train, test = choice.layer, ctx.split.train, ctx.split.test
    features = ctx.features[choice.hook_name]
    y_train, y_test = ctx.labels[train], ctx.labels[test]
    with watch.fit():
        eraser = fit_eraser(features[train], y_train)
        erased_train, erased_test = erase(eraser, features[train]), erase(eraser, features[test])
        fresh = LogisticProbe(random_state=ctx.seed).fit(erased_train, y_train)
        figure = bootstrap_auroc(
            fresh.decision_function(erased_test), y_test, n_boot=ctx.n_boot, seed=ctx.seed
        )
        # On the rows it was fitted on LEACE is exact: a fresh probe there is at chance by
        # construction, so a held-out figure above it is the eraser failing to generalise.
        train_auroc = auroc(fresh.decision_function(erased_train), y_train)
        rank = int(torch.linalg.matrix_rank(eraser.proj_left @ eraser.proj_right).item())

    probes = layer_probes(ctx, choice.downstream, watch)
    tokens = held_out_tokens(ctx, choice.hook_name, watch)
    token_eraser = as_float32(eraser)
    # The eraser is affine and was fitted on pooled (mean) features; applying it to every token
    # is the usual practice (as in LEACE's own experiments) and, for mean pooling, erases the
    # pooled vector exactly, since an affine map commutes with the mean over tokens.
    edits = {CLEAN: identity, "erase": token_eraser}
    pooled = resume_pooled(
        ctx, layer, tokens, edits, choice.downstream, watch, desc=f"{CHECK} at layer {layer}"
    )
    with watch.fit():
        scores = score_pooled(probes, pooled)
        downstream = downstream_effects(scores[CLEAN], scores["erase"], y_test)
        worst = max(downstream, key=lambda row: float(row["auroc_drop"]))
        hook = str(worst["hook_name"])
        drop = bootstrap_auroc_difference(
            scores[CLEAN][hook], scores["erase"][hook], y_test, n_boot=ctx.n_boot, seed=ctx.seed
        )

    details = {
        "layer": layer,
        "hook_name": choice.hook_name,
        "layer_note": choice.note,
        "auroc_before": choice.auroc.as_dict(),
        "auroc_after_train": train_auroc,
        "eraser_rank": rank,
        "n_train": len(train),
        "n_test": len(test),
        "downstream": {
            "largest_auroc_drop": drop.as_dict(),
            "headline_hook": hook,
            "per_layer": downstream,
        },
        "pooling": ctx.pooling,
    }
    if ctx.pooling != "mean":
        details["pooling_note"] = (
            f"{ctx.pooling} pooling does not commute with the per-token eraser; the downstream "
            "reading erases tokens, the sanity reading erases pooled features"
        )
    result = CheckResult.judged(
        CHECK,
        TITLE,
        figure,
        f"held-out AUROC of a fresh probe after LEACE at layer {layer}",
        thresholds["erasure_chance"],
        details=details,
        forward_seconds=watch.forward_seconds,
        fit_seconds=watch.fit_seconds,
    )
    if result.verdict == "fail":
        result.reason = (
            f"a fresh linear probe still decodes the concept after LEACE at layer {layer} "
            f"(held-out AUROC {figure.value:.3f}; before erasure {choice.auroc.value:.3f})"
        )
    return result
