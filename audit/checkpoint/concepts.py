"""Concept checks on a checkpoint: presence per layer, scorecard verdicts, probe drift.

Each concept is probed on a fixed sample of its bundled dataset (same texts, same split for the
same spec, so a baseline's figures and the new checkpoint's are comparable): a logistic probe per
spec layer, the scorecard checks the spec names, and, against a baseline, the baseline's own
probe scored on the new checkpoint's activations (the AUROC it loses) and the re-fitted probe's
direction against the baseline's (cosine; probes score raw activations).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from audit.checkpoint.outcome import CheckOutcome, Comparison, Expectation
from audit.checkpoint.spec import AuditSpec, AuditSpecError
from probes.backbone import Backbone
from probes.datasets import ConceptDataset, load_dataset
from probes.hooks import resid_post
from probes.metrics import bootstrap_auroc
from probes.robustness.core import load_thresholds
from probes.robustness.scorecard import Scorecard, context_from_result, run_scorecard
from probes.run import DatasetProbeResult, probe_dataset
from probes.store import ActivationStore

N_BOOT = 500


@dataclass
class ConceptRun:
    """One concept measured on one checkpoint: its probed dataset and scorecard."""

    concept: str
    dataset: ConceptDataset
    result: DatasetProbeResult
    card: Scorecard | None

    def probe(self, layer: int) -> Any:
        return self.result.sweep.fitted[("logistic", resid_post(layer))]

    def test_features(self, layer: int) -> np.ndarray:
        return self.result.features[resid_post(layer)][self.result.split.test]

    def test_labels(self) -> np.ndarray:
        return (self.dataset.labels[self.result.split.test] == 1).astype(int)


def measure_concept(
    backbone: Backbone,
    spec: AuditSpec,
    concept: str,
    *,
    store: ActivationStore | None = None,
    progress: bool = False,
) -> ConceptRun:
    """Return ``concept`` probed at the spec's layers on ``backbone``, with its scorecard."""
    cs = spec.concepts[concept]
    too_deep = [layer for layer in cs.layers if layer >= backbone.n_layers]
    if too_deep:
        raise AuditSpecError(
            f"concepts.{concept}.layers: {too_deep} do not exist on {backbone.name} "
            f"({backbone.n_layers} layers, 0 to {backbone.n_layers - 1})."
        )
    dataset = load_dataset(spec.dataset(concept), max_samples=spec.samples(concept), seed=spec.seed)
    store = store or ActivationStore()
    with tempfile.TemporaryDirectory(prefix="audit-probes-") as probe_dir:
        result = probe_dataset(
            backbone,
            dataset,
            store=store,
            hook_names=[resid_post(layer) for layer in cs.layers],
            probe_kinds=("logistic",),
            seed=spec.seed,
            n_boot=N_BOOT,
            progress=progress,
            probe_dir=Path(probe_dir),
        )
    card = None
    if cs.scorecard:
        ctx = context_from_result(
            backbone, result, store=store, seed=spec.seed, n_boot=N_BOOT, progress=progress
        )
        card = run_scorecard(
            ctx, thresholds=load_thresholds(overrides=cs.thresholds), checks=cs.scorecard
        )
    return ConceptRun(concept, dataset, result, card)


def presence_outcomes(run: ConceptRun, spec: AuditSpec) -> list[CheckOutcome]:
    """Return one outcome per spec layer: the held-out AUROC against ``min_auroc``."""
    cs = spec.concepts[run.concept]
    scores = {s.layer: s for s in run.result.sweep.scores if s.probe == "logistic"}
    out = []
    for layer in cs.layers:
        score = scores[layer]
        out.append(
            CheckOutcome(
                check_id=f"concept[{run.concept}]::presence@L{layer}",
                title=f"{run.concept} is decodable at layer {layer} (held-out AUROC)",
                expected=Expectation(">=", cs.min_auroc),
                measured=score.auroc.value,
                low=score.auroc.low,
                high=score.auroc.high,
                n=score.n_test,
                details={"dataset": run.dataset.name, "n_train": score.n_train},
            )
        )
    return out


def scorecard_outcomes(run: ConceptRun) -> list[CheckOutcome]:
    """Return one outcome per scorecard check the spec names: its figure against its bar."""
    if run.card is None:
        return []
    out = []
    for check in run.card.checks:
        check_id = f"concept[{run.concept}]::scorecard::{check.check}"
        title = f"{run.concept}: {check.title}"
        if check.figure is None or check.threshold is None:
            reason = check.reason or "the check produced no figure"
            out.append(
                CheckOutcome(check_id, title, Expectation(">=", 0.0), float("nan"), skipped=reason)
            )
            continue
        op: Comparison = ">=" if check.threshold.op == ">=" else "<="
        out.append(
            CheckOutcome(
                check_id=check_id,
                title=f"{title} ({check.figure_label})",
                expected=Expectation(op, check.threshold.value),
                measured=check.figure.value,
                low=check.figure.low,
                high=check.figure.high,
                details={"verdict": check.verdict, "reason": check.reason},
            )
        )
    return out


def drift_outcomes(
    run: ConceptRun,
    spec: AuditSpec,
    baseline_probes: dict[int, Any],
    baseline_auroc: dict[int, float],
    *,
    seed: int = 0,
) -> list[CheckOutcome]:
    """Return, per spec layer, the baseline probe's AUROC loss and the direction cosine."""
    cs = spec.concepts[run.concept]
    labels = run.test_labels()
    out = []
    for layer in cs.layers:
        old = baseline_probes[layer]
        scores = old.decision_function(run.test_features(layer))
        now = bootstrap_auroc(scores, labels, n_boot=N_BOOT, seed=seed)
        before = baseline_auroc[layer]
        out.append(
            CheckOutcome(
                check_id=f"drift[{run.concept}]::baseline_probe@L{layer}",
                title=(
                    f"{run.concept}: the baseline's layer-{layer} probe keeps its AUROC on this "
                    "checkpoint (AUROC drop)"
                ),
                expected=Expectation("<=", cs.max_auroc_drop),
                measured=before - now.value,
                low=before - now.high,
                high=before - now.low,
                n=len(labels),
                details={"baseline_auroc": before, "auroc_on_checkpoint": now.as_dict()},
            )
        )
        cosine = float(run.probe(layer).direction_ @ old.direction_)  # raw activation units
        out.append(
            CheckOutcome(
                check_id=f"drift[{run.concept}]::direction@L{layer}",
                title=(
                    f"{run.concept}: the probe re-fitted at layer {layer} points where the "
                    "baseline's did (cosine)"
                ),
                expected=Expectation(">=", cs.min_direction_cosine),
                measured=cosine,
                n=int(len(run.result.split.train)),
            )
        )
    return out
