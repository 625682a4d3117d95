"""Cross-dataset transfer: does a probe fitted on one dataset of a concept work on the others?

Each dataset of the concept (the context's primary one plus ``ctx.others``: the concept's other
bundled datasets and any ``--transfer`` file) gets a LogisticProbe at its own best layer, fitted
on its training split; the probe is scored on every dataset's held-out split. The result is a
transfer matrix (rows: fitted on, columns: scored on; the diagonal is in-domain held-out AUROC)
and the headline is the lowest off-diagonal AUROC.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from probes.datasets import (
    CONCEPT_LABELS,
    ConceptDataset,
    Split,
    load_jsonl,
    match_label_names,
)
from probes.estimators import LogisticProbe
from probes.metrics import Estimate, bootstrap_auroc
from probes.robustness.core import (
    CheckContext,
    CheckResult,
    Stopwatch,
    Threshold,
    require_samples,
)
from probes.sweep import LayerScore, SweepResult, sweep_layers

CHECK = "transfer"
TITLE = "Cross-dataset transfer: lowest off-diagonal AUROC"
MIN_PER_CLASS = 20  # per dataset: enough for a split whose held-out AUROC has a usable interval


def attach_transfer_file(concept_label_names: tuple[str, ...], path: str | Path) -> ConceptDataset:
    """Return a user JSONL dataset with its labels matched to the concept's label names.

    Labels that match none of ``concept_label_names`` (by name, case-insensitive, or synonym such
    as 1/0, yes/no) raise ``InvalidInputError`` listing the expected names.
    """
    names = tuple(concept_label_names)
    concept = next((c for c, known in CONCEPT_LABELS.items() if known == names), "custom")
    return match_label_names(load_jsonl(path, concept=concept), names)


@dataclass
class _Source:
    """One dataset of the transfer matrix: positive labels, split, features and its best probe."""

    dataset: ConceptDataset
    labels: np.ndarray  # 0/1, 1 = the concept's positive class
    split: Split
    features: dict[str, np.ndarray]
    best: LayerScore
    probe: Any

    @classmethod
    def of(
        cls,
        dataset: ConceptDataset,
        labels: np.ndarray,
        split: Split,
        features: dict[str, np.ndarray],
        sweep: SweepResult,
        seed: int,
    ) -> _Source:
        """Return the source with the sweep's best logistic probe (refitted if not kept)."""
        best = sweep.best("logistic")
        probe = sweep.fitted.get(("logistic", best.hook_name))
        if probe is None:
            probe = LogisticProbe(random_state=seed)
            probe.fit(features[best.hook_name][split.train], labels[split.train])
        return cls(dataset, labels, split, features, best, probe)


def _other_source(ctx: CheckContext, dataset: ConceptDataset, watch: Stopwatch) -> _Source:
    dataset = match_label_names(dataset, ctx.dataset.label_names)  # no-op when the caller did
    hooks = list(ctx.features)
    with watch.forward():
        extraction = ctx.store.get(
            ctx.backbone,
            dataset.texts,
            hooks,
            (ctx.pooling,),
            batch_size=ctx.batch_size,
            progress=ctx.progress,
            dataset_name=dataset.name,
        )
    features = {h: extraction.pooled[(h, ctx.pooling)] for h in hooks}
    labels = (dataset.labels == 1).astype(int)
    if dataset.hash in ctx.other_sweeps:  # swept already (e.g. by `audit probe`): reuse it
        split, done = ctx.other_sweeps[dataset.hash]
        with watch.fit():
            return _Source.of(dataset, labels, split, features, done, ctx.seed)
    with watch.fit():
        # The same held-out fraction and seed as the primary dataset's split.
        split = dataset.split(test_size=len(ctx.split.test) / ctx.dataset.n_samples, seed=ctx.seed)
        sweep = sweep_layers(
            features,
            labels,
            split.train,
            split.test,
            pooling=ctx.pooling,
            probe_kinds=("logistic",),
            n_boot=ctx.n_boot,
            seed=ctx.seed,
            progress=ctx.progress,
        )
        return _Source.of(dataset, labels, split, features, sweep, ctx.seed)


def run(ctx: CheckContext, thresholds: dict[str, Threshold]) -> CheckResult:
    """Return the transfer matrix of the concept's datasets, judged by its lowest off-diagonal."""
    datasets = [ctx.dataset, *ctx.others]
    if len(datasets) < 2:
        return CheckResult.skipped(
            CHECK,
            TITLE,
            "only one dataset of this concept; give --transfer FILE.jsonl with labelled "
            f"{ctx.dataset.concept} examples from another source to measure transfer "
            f"(have: {ctx.dataset.name}).",
        )
    for dataset in datasets:
        n_have = int(min(np.bincount(dataset.labels, minlength=2)[:2]))
        skipped = require_samples(
            CHECK, TITLE, n_have, MIN_PER_CLASS, f"examples of each class in {dataset.name!r}"
        )
        if skipped is not None:
            return skipped
    watch = Stopwatch()
    with watch.fit():
        primary = _Source.of(ctx.dataset, ctx.labels, ctx.split, ctx.features, ctx.sweep, ctx.seed)
    sources = [primary, *(_other_source(ctx, d, watch) for d in ctx.others)]
    matrix: list[list[Estimate]] = []
    with watch.fit():
        for source in sources:
            row: list[Estimate] = []
            for target in sources:
                test = target.split.test
                scores = source.probe.decision_function(
                    target.features[source.best.hook_name][test]
                )
                row.append(
                    bootstrap_auroc(scores, target.labels[test], n_boot=ctx.n_boot, seed=ctx.seed)
                )
            matrix.append(row)
    names = [s.dataset.name for s in sources]
    off = [(i, j) for i in range(len(sources)) for j in range(len(sources)) if i != j]
    i, j = min(off, key=lambda ij: matrix[ij[0]][ij[1]].value)
    details: dict[str, Any] = {
        "datasets": names,
        "best_layers": {s.dataset.name: s.best.layer for s in sources},
        "matrix": [[cell.as_dict() for cell in row] for row in matrix],
        "lowest": {"fitted_on": names[i], "scored_on": names[j]},
        "n_test": {s.dataset.name: len(s.split.test) for s in sources},
    }
    return CheckResult.judged(
        CHECK,
        TITLE,
        matrix[i][j],
        f"AUROC of the {names[i]} probe on {names[j]}",
        thresholds["transfer_auroc"],
        details=details,
        forward_seconds=watch.forward_seconds,
        fit_seconds=watch.fit_seconds,
    )
