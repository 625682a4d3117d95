"""Random-backbone baseline: does a re-initialised copy of the backbone decode the concept as well?

A concept that the same architecture with random weights decodes about as well is carried by the
tokens themselves (lexical), not by anything the backbone learned. The same probe (LogisticProbe,
the same split, every layer, the L2 strength chosen for that layer of the trained backbone) is fitted on the random backbone's activations, which the store
keeps under that backbone's own fingerprint; the headline is the gap between the two best layers.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from probes.backbone import Backbone
from probes.estimators import LogisticProbe
from probes.metrics import bootstrap_auroc_difference
from probes.robustness.core import (
    CheckContext,
    CheckResult,
    Stopwatch,
    Threshold,
    require_samples,
)
from probes.sweep import SweepResult, sweep_layers

CHECK = "random_backbone"
TITLE = "Random-backbone baseline: trained minus re-initialised AUROC"
MIN_TEST_PER_CLASS = 10  # fewer held-out rows per class give AUROC intervals too wide to judge

_RANDOM_BACKBONES: dict[tuple[str, int, str, int], Backbone] = {}
_LOCK = threading.Lock()


def random_backbone(backbone: Backbone, seed: int) -> Backbone:
    """Return ``backbone``'s architecture with weights re-initialised from ``seed``, booted once."""
    key = (backbone.name, seed, str(backbone.device), backbone.max_length)
    with _LOCK:  # booting takes about a second; checks of several concepts share one copy
        if key not in _RANDOM_BACKBONES:
            _RANDOM_BACKBONES[key] = Backbone.load(
                backbone.name,
                device=str(backbone.device),
                max_length=backbone.max_length,
                weights="random",
                seed=seed,
            )
        return _RANDOM_BACKBONES[key]


def best_probe(ctx: CheckContext, sweep: SweepResult, features: dict[str, np.ndarray]) -> Any:
    """Return the sweep's best logistic probe, refitted on the training rows if it was not kept."""
    hook = sweep.best("logistic").hook_name
    probe = sweep.fitted.get(("logistic", hook))
    if probe is None:
        probe = LogisticProbe(random_state=ctx.seed)
        probe.fit(features[hook][ctx.split.train], ctx.labels[ctx.split.train])
    return probe


def held_out_scores(
    ctx: CheckContext, sweep: SweepResult, features: dict[str, np.ndarray]
) -> np.ndarray:
    """Return the sweep's best logistic probe scored on the held-out rows of ``features``."""
    hook = sweep.best("logistic").hook_name
    return np.asarray(
        best_probe(ctx, sweep, features).decision_function(features[hook][ctx.split.test])
    )


def same_strengths(sweep: SweepResult) -> dict[tuple[str, str], dict[str, Any]]:
    """Return the L2 strength the trained backbone's sweep chose per layer, to fit it again.

    The baseline is the same probe, hyperparameters included: each random-backbone layer is
    fitted with the strength cross-validation chose for that layer of the trained backbone.
    """
    return {
        key: {"Cs": (float(probe.C_),)}
        for key, probe in sweep.fitted.items()
        if key[0] == "logistic" and hasattr(probe, "C_")
    }


def run(ctx: CheckContext, thresholds: dict[str, Threshold]) -> CheckResult:
    """Return the gap between the trained and the random backbone's best-layer AUROC."""
    test_labels = ctx.labels[ctx.split.test]
    n_have = int(min(np.sum(test_labels == 0), np.sum(test_labels == 1)))
    skipped = require_samples(
        CHECK, TITLE, n_have, MIN_TEST_PER_CLASS, "held-out examples of each class"
    )
    if skipped is not None:
        return skipped
    watch = Stopwatch()
    hooks = list(ctx.features)
    with watch.forward():  # booting and any forward of the random backbone
        rand = random_backbone(ctx.backbone, ctx.seed)
        extraction = ctx.store.get(
            rand,
            ctx.dataset.texts,
            hooks,
            (ctx.pooling,),
            batch_size=ctx.batch_size,
            progress=ctx.progress,
            dataset_name=ctx.dataset.name,
        )
    with watch.fit():
        rand_features = {h: extraction.pooled[(h, ctx.pooling)] for h in hooks}
        rand_sweep = sweep_layers(
            rand_features,
            ctx.labels,
            ctx.split.train,
            ctx.split.test,
            pooling=ctx.pooling,
            probe_kinds=("logistic",),
            n_boot=ctx.n_boot,
            seed=ctx.seed,
            progress=ctx.progress,
            probe_params=same_strengths(ctx.sweep),
        )
        trained_best, rand_best = ctx.sweep.best("logistic"), rand_sweep.best("logistic")
        gap = bootstrap_auroc_difference(
            held_out_scores(ctx, ctx.sweep, ctx.features),
            held_out_scores(ctx, rand_sweep, rand_features),
            test_labels,
            n_boot=ctx.n_boot,
            seed=ctx.seed,
        )
    trained_by_hook = {s.hook_name: s for s in ctx.sweep.scores if s.probe == "logistic"}
    per_layer = [
        {
            "layer": s.layer,
            "hook_name": s.hook_name,
            "trained_auroc": trained_by_hook[s.hook_name].auroc.as_dict()
            if s.hook_name in trained_by_hook
            else None,
            "random_auroc": s.auroc.as_dict(),
        }
        for s in rand_sweep.scores
    ]
    return CheckResult.judged(
        CHECK,
        TITLE,
        gap,
        f"AUROC gap: trained (layer {trained_best.layer}) minus random (layer {rand_best.layer})",
        thresholds["random_backbone_gap"],
        details={
            "trained_best": {"layer": trained_best.layer, "auroc": trained_best.auroc.as_dict()},
            "random_best": {"layer": rand_best.layer, "auroc": rand_best.auroc.as_dict()},
            "per_layer": per_layer,
            "random_backbone": rand.name,
            "random_fingerprint": rand.fingerprint,
            "seed": ctx.seed,
        },
        forward_seconds=watch.forward_seconds,
        fit_seconds=watch.fit_seconds,
    )
