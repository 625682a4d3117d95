"""Probe one labelled dataset end to end: stored activations -> split -> layer sweep -> saved probes."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from probes.artifacts import ProbeMeta, save_probe
from probes.backbone import Backbone
from probes.datasets import ConceptDataset, Split
from probes.home import audit_home
from probes.store import ActivationStore
from probes.sweep import SweepResult, sweep_layers

logger = logging.getLogger(__name__)


@dataclass
class DatasetProbeResult:
    """The layer sweep of one dataset, with what it rests on and where its probes were saved."""

    dataset: ConceptDataset
    split: Split
    sweep: SweepResult
    pooling: str
    n_truncated: int
    mean_tokens: float
    max_tokens: int
    extraction_seconds: float
    forward_passes: int
    probe_files: dict[str, str] = field(default_factory=dict)  # "<kind>@<hook>" -> json path
    features: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # hook -> [n, d]

    def summary(self) -> dict[str, Any]:
        """Return the dataset's headline figures: best layer and AUROC per probe kind."""
        best = {}
        for kind in self.sweep.probe_kinds:
            score = self.sweep.best(kind)
            best[kind] = {
                "layer": score.layer,
                "hook_name": score.hook_name,
                "auroc": score.auroc.as_dict(),
                "accuracy": score.accuracy.as_dict(),
            }
        return {
            "dataset": self.dataset.name,
            "concept": self.dataset.concept,
            "n_samples": self.dataset.n_samples,
            "best": best,
        }


def probe_dataset(
    backbone: Backbone,
    dataset: ConceptDataset,
    *,
    store: ActivationStore | None = None,
    hook_names: list[str] | None = None,
    pooling: str = "mean",
    probe_kinds: tuple[str, ...] = ("logistic", "mass_mean"),
    test_size: float = 0.3,
    seed: int = 0,
    n_boot: int = 1000,
    batch_size: int = 32,
    progress: bool = True,
    probe_dir: Path | None = None,
) -> DatasetProbeResult:
    """Return the layer sweep of ``dataset`` on ``backbone``, saving every fitted probe.

    Activations come from the store (computed once, then read); probes are saved under
    ``probe_dir`` (default: ``<AUDIT_HOME>/probes/<fingerprint>/<dataset>-<hash>``) because
    screening and the audits reuse them.
    """
    store = store or ActivationStore()
    hooks = hook_names or backbone.resid_hooks()
    split = dataset.split(test_size=test_size, seed=seed)
    forwards_before = backbone.n_forward_passes
    started = time.perf_counter()
    extraction = store.get(
        backbone,
        dataset.texts,
        hooks,
        (pooling,),
        batch_size=batch_size,
        progress=progress,
        dataset_name=dataset.name,
    )
    elapsed = time.perf_counter() - started
    features = {hook: extraction.pooled[(hook, pooling)] for hook in hooks}
    sweep = sweep_layers(
        features,
        dataset.labels,
        split.train,
        split.test,
        pooling=pooling,
        probe_kinds=probe_kinds,
        n_boot=n_boot,
        seed=seed,
        progress=progress,
    )
    folder = probe_dir or (
        audit_home() / "probes" / backbone.fingerprint / f"{dataset.name}-{dataset.hash[:12]}"
    )
    files: dict[str, str] = {}
    for score in sweep.scores:
        probe = sweep.fitted[(score.probe, score.hook_name)]
        meta = ProbeMeta(
            kind=score.probe,  # type: ignore[arg-type]
            concept=dataset.concept,
            dataset=dataset.name,
            layer=score.layer,
            hook_name=score.hook_name,
            pooling=pooling,
            d_model=backbone.d_model,
            label_names=list(dataset.label_names),
            backbone=backbone.name,
            fingerprint=backbone.fingerprint,
            metrics={"auroc": score.auroc.as_dict(), "accuracy": score.accuracy.as_dict()},
            dataset_hash=dataset.hash,
        )
        path = save_probe(probe, folder / f"{score.probe}.{score.hook_name}.{pooling}", meta)
        files[f"{score.probe}@{score.hook_name}"] = str(path)
    lengths = np.asarray(extraction.n_tokens)
    return DatasetProbeResult(
        dataset=dataset,
        split=split,
        sweep=sweep,
        pooling=pooling,
        n_truncated=extraction.n_truncated,
        mean_tokens=float(lengths.mean()) if len(lengths) else 0.0,
        max_tokens=int(lengths.max()) if len(lengths) else 0,
        extraction_seconds=elapsed,
        forward_passes=backbone.n_forward_passes - forwards_before,
        probe_files=files,
        features=features,
    )
