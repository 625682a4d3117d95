"""Selectivity against control tasks (Hewitt & Liang 2019): real probe AUROC minus control AUROC.

The control task keeps the inputs and the probe (LogisticProbe's model: standardise, then L2
logistic regression at the C the sweep chose at that layer, as Hewitt & Liang keep the
hyperparameters) but reassigns the labels by a seeded permutation of all rows, so neither the
training nor the held-out control labels carry the concept. Sentences share no word types, so
unlike Hewitt & Liang's per-type control this one cannot be learnt: its held-out AUROC is chance
by construction, and selectivity is how far the real probe stands above a probe of the same
capacity fitted to noise (the paired interval carries the noise of both). The control's
training AUROC, in details, is that capacity: how much noise the probe memorises.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from probes.metrics import Estimate, _auroc_rows, auroc
from probes.robustness.core import (
    CheckContext,
    CheckResult,
    Stopwatch,
    Threshold,
    require_samples,
)

CHECK = "selectivity"
TITLE = "Selectivity against control tasks"
N_PERMUTATIONS = 5  # at the best layer
N_LAYER_PERMUTATIONS = 2  # at every other layer (details only): fits there are the cost
MIN_PER_CLASS = 10  # in each of the training and held-out splits


class _LayerControl(NamedTuple):
    real_scores: np.ndarray  # held-out decision values of the sweep's probe [n_test]
    control_scores: list[np.ndarray]  # per permutation, held-out control decision values
    control_labels: list[np.ndarray]  # per permutation, held-out control labels
    control_train_auroc: list[float]
    C: float


def sweep_c(ctx: CheckContext, hook_name: str) -> float:
    """Return the L2 strength C the sweep's logistic probe chose at ``hook_name`` (1.0 if none)."""
    for score in ctx.sweep.scores:
        if score.probe == "logistic" and score.hook_name == hook_name:
            return float(score.params.get("C", 1.0))
    return 1.0


def fixed_c_probe(C: float) -> Pipeline:
    """Return an unfitted LogisticProbe-equivalent model at a fixed C (no cross-validation).

    LogisticProbe's own model (standardise, L2 logistic regression) without its per-fit CV over
    C, which costs about 20 single fits; refits on resampled or shuffled data keep the sweep's C.
    """
    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))


def probe_direction(model: Pipeline) -> np.ndarray:
    """Return the unit-norm direction in raw activation space of a fitted ``fixed_c_probe``."""
    coef = model[-1].coef_[0] / model[0].scale_  # as LogisticProbe maps coef_ back to raw space
    return coef / max(float(np.linalg.norm(coef)), 1e-12)


def _layer_control(
    ctx: CheckContext, hook: str, labels: np.ndarray, permutations: list[np.ndarray]
) -> _LayerControl:
    train, test = ctx.split
    X = np.asarray(ctx.features[hook], dtype=np.float64)
    C = sweep_c(ctx, hook)
    probe = ctx.sweep.fitted.get(("logistic", hook))
    if probe is None:  # a sweep restored without its fitted probes
        probe = fixed_c_probe(C).fit(X[train], labels[train])
    real = probe.decision_function(X[test])
    scores, held_out, train_auroc = [], [], []
    for order in permutations:
        control = labels[order]
        probe = fixed_c_probe(C).fit(X[train], control[train])
        scores.append(probe.decision_function(X[test]))
        held_out.append(control[test])
        train_auroc.append(auroc(probe.decision_function(X[train]), control[train]))
    return _LayerControl(real, scores, held_out, train_auroc, C)


def _paired_bootstrap(layer: _LayerControl, labels: np.ndarray, n_boot: int, seed: int) -> Estimate:
    """Return real minus mean control AUROC, the interval resampling the same held-out rows."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    idx = rng.integers(0, n, size=(n_boot, n))
    real = _auroc_rows(layer.real_scores[idx], labels[idx].astype(bool))
    control = np.mean(
        [
            _auroc_rows(s[idx], y[idx].astype(bool))
            for s, y in zip(layer.control_scores, layer.control_labels, strict=True)
        ],
        axis=0,
    )
    diff = real - control
    diff = diff[np.isfinite(diff)]  # resamples that drew one class only
    point = auroc(layer.real_scores, labels) - _control_auroc(layer)
    low, high = np.percentile(diff, [2.5, 97.5]) if len(diff) else (np.nan, np.nan)
    return Estimate(point, float(low), float(high))


def _control_auroc(layer: _LayerControl) -> float:
    return float(
        np.mean(
            [auroc(s, y) for s, y in zip(layer.control_scores, layer.control_labels, strict=True)]
        )
    )


def run(
    ctx: CheckContext, thresholds: dict[str, Threshold], *, n_permutations: int = N_PERMUTATIONS
) -> CheckResult:
    """Return the selectivity of the best layer's probe (real minus control AUROC), judged."""
    labels = np.asarray(ctx.labels).astype(int)
    train, test = ctx.split
    n_have = int(min(np.bincount(labels[s], minlength=2).min() for s in (train, test)))
    skip = require_samples(
        CHECK, TITLE, n_have, MIN_PER_CLASS, "training and held-out examples of each class"
    )
    if skip is not None:
        return skip
    watch = Stopwatch()
    rng = np.random.default_rng(ctx.seed)
    permutations = [rng.permutation(len(labels)) for _ in range(n_permutations)]
    with watch.fit():
        layers = {
            hook: _layer_control(
                ctx,
                hook,
                labels,
                permutations if hook == ctx.best_hook else permutations[:N_LAYER_PERMUTATIONS],
            )
            for hook in ctx.features
        }
        best = layers[ctx.best_hook]
        figure = _paired_bootstrap(best, labels[test], ctx.n_boot, ctx.seed)
    real, control = auroc(best.real_scores, labels[test]), _control_auroc(best)
    per_layer = [
        {
            "hook_name": hook,
            "layer": score.layer,
            "real_auroc": auroc(layer.real_scores, labels[test]),
            "control_auroc": _control_auroc(layer),
            "control_train_auroc": float(np.mean(layer.control_train_auroc)),
            "selectivity": auroc(layer.real_scores, labels[test]) - _control_auroc(layer),
            "C": layer.C,
        }
        for hook, layer in layers.items()
        for score in ctx.sweep.scores
        if score.probe == "logistic" and score.hook_name == hook
    ]
    control_aurocs = [
        auroc(s, y) for s, y in zip(best.control_scores, best.control_labels, strict=True)
    ]
    return CheckResult.judged(
        CHECK,
        TITLE,
        figure,
        f"AUROC minus control AUROC at layer {ctx.best_layer}",
        thresholds["selectivity"],
        reason=(
            f"real AUROC {real:.3f} minus control AUROC {control:.3f} (mean of "
            f"{n_permutations} label permutations) at layer {ctx.best_layer}"
        ),
        details={
            "hook_name": ctx.best_hook,
            "layer": ctx.best_layer,
            "real_auroc": real,
            "control_auroc": control,
            "control_auroc_per_permutation": control_aurocs,
            "control_train_auroc": float(np.mean(best.control_train_auroc)),
            "n_permutations": n_permutations,
            "n_permutations_other_layers": min(n_permutations, N_LAYER_PERMUTATIONS),
            "C": best.C,
            "interval": "95% paired percentile bootstrap over held-out rows",
            "layers": per_layer,
        },
        fit_seconds=watch.fit_seconds,
    )
