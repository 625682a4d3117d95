"""Shared fixtures of the robustness checks: a small real CheckContext, and synthetic ones."""

from __future__ import annotations

import pytest

from probes import ActivationStore, Backbone, load_dataset, probe_dataset
from probes.robustness import CheckContext
from probes.robustness.scorecard import context_from_result

# Small enough to keep each check's test module fast, large enough (about 45 held-out examples
# per class) that every check's minimum sample count is met and the concept is clearly present.
REAL_CONTEXT_SAMPLES = 300


@pytest.fixture(scope="session")
def real_context(backbone: Backbone, tmp_path_factory) -> CheckContext:
    """Return a CheckContext of 300 Rotten Tomatoes reviews on the real MiniLM, all layers."""
    dataset = load_dataset("rotten_tomatoes", max_samples=REAL_CONTEXT_SAMPLES, seed=0)
    store = ActivationStore(tmp_path_factory.mktemp("robustness-store"))
    result = probe_dataset(
        backbone,
        dataset,
        store=store,
        n_boot=200,
        progress=False,
        probe_dir=tmp_path_factory.mktemp("robustness-probes"),
    )
    return context_from_result(backbone, result, store=store, n_boot=200, progress=False)


@pytest.fixture(scope="session")
def synthetic_context():
    """Return a builder of CheckContexts on synthetic features (no backbone or store needed).

    ``build(features, labels, split=None, seed=0)`` takes [n, d] features (or a dict of them by
    hook name), sweeps a logistic probe over them and returns the context; checks that fit only
    on ``ctx.features`` run on it unchanged.
    """
    import numpy as np

    from probes import ConceptDataset
    from probes.datasets import Split
    from probes.sweep import sweep_layers

    def build(features, labels, split: Split | None = None, seed: int = 0) -> CheckContext:
        if not isinstance(features, dict):
            features = {"blocks.0.hook_resid_post": np.asarray(features)}
        labels = np.asarray(labels).astype(int)
        dataset = ConceptDataset(
            name="synthetic",
            concept="custom",
            texts=tuple(f"example {i}" for i in range(len(labels))),
            labels=labels,
            label_names=("negative", "positive"),
            source="synthetic",
        )
        split = split or dataset.split(test_size=0.3, seed=seed)
        sweep = sweep_layers(
            features, labels, split.train, split.test,
            probe_kinds=("logistic",), n_boot=200, seed=seed, progress=False,
        )  # fmt: skip
        return CheckContext(
            backbone=None,  # type: ignore[arg-type]
            store=None,  # type: ignore[arg-type]
            dataset=dataset,
            split=split,
            features=features,
            labels=labels,
            sweep=sweep,
            seed=seed,
            n_boot=200,
            progress=False,
        )

    return build
