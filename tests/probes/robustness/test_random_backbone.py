"""Random-backbone baseline: a learned concept shows a gap, a purely lexical one does not."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from probes import ActivationStore, Backbone, ConceptDataset, load_dataset, sweep_layers
from probes.metrics import bootstrap_auroc_difference
from probes.robustness import THRESHOLDS, CheckContext
from probes.robustness import random_backbone as check

N_PER_CLASS = 100


def _context(backbone: Backbone, dataset: ConceptDataset, store: ActivationStore) -> CheckContext:
    hooks = backbone.resid_hooks()
    split = dataset.split(test_size=0.3, seed=0)
    extraction = store.get(backbone, dataset.texts, hooks, progress=False)
    features = {h: extraction.pooled[(h, "mean")] for h in hooks}
    labels = (dataset.labels == 1).astype(int)
    sweep = sweep_layers(
        features, labels, split.train, split.test, probe_kinds=("logistic",), n_boot=200,
        progress=False,
    )  # fmt: skip
    return CheckContext(
        backbone, store, dataset, split, features, labels, sweep, n_boot=200, progress=False
    )


@pytest.fixture(scope="module")
def lexical_dataset() -> ConceptDataset:
    """Return real Rotten Tomatoes snippets labelled only by whether they contain 'film'."""
    texts = load_dataset("rotten_tomatoes").texts
    rng = np.random.default_rng(0)
    has = [t for t in texts if "film" in t.lower()]
    lacks = [t for t in texts if "film" not in t.lower()]
    rows = [has[i] for i in rng.choice(len(has), N_PER_CLASS, replace=False)]
    rows += [lacks[i] for i in rng.choice(len(lacks), N_PER_CLASS, replace=False)]
    labels = np.array([1] * N_PER_CLASS + [0] * N_PER_CLASS)
    return ConceptDataset("film_word", "lexical", tuple(rows), labels, ("absent", "film"), "test")


def test_learned_concept_shows_a_gap(real_context: CheckContext) -> None:
    result = check.run(real_context, THRESHOLDS)
    assert result.verdict == "pass", result.as_dict()
    gap = result.figure
    assert gap is not None and gap.low <= gap.value <= gap.high
    assert gap.value > 0.1 and gap.low > 0  # sentiment is learned: the random network lacks it
    details = result.details
    assert len(details["per_layer"]) == real_context.backbone.n_layers
    assert details["random_fingerprint"] != real_context.backbone.fingerprint
    trained = details["trained_best"]["auroc"]["value"]
    assert trained == pytest.approx(real_context.sweep.best("logistic").auroc.value)
    assert trained - details["random_best"]["auroc"]["value"] == pytest.approx(gap.value)
    assert result.fit_seconds > 0 and result.forward_seconds > 0


def test_random_backbone_is_cached_and_its_activations_stored(real_context: CheckContext) -> None:
    rand = check.random_backbone(real_context.backbone, real_context.seed)
    assert check.random_backbone(real_context.backbone, real_context.seed) is rand
    passes = rand.n_forward_passes
    real_context.store.get(rand, real_context.dataset.texts, list(real_context.features))
    assert rand.n_forward_passes == passes  # the check stored them under its own fingerprint


def test_lexical_concept_is_flagged(
    backbone: Backbone, lexical_dataset: ConceptDataset, tmp_path
) -> None:
    ctx = _context(backbone, lexical_dataset, ActivationStore(tmp_path))
    assert ctx.sweep.best("logistic").auroc.value > 0.85  # decodable by the trained backbone...
    result = check.run(ctx, THRESHOLDS)
    # ...and just as well by a random one: the word, not anything learned, carries it.
    assert result.verdict == "fail", result.as_dict()
    assert result.figure is not None and result.figure.value < 0.05
    assert result.details["random_best"]["auroc"]["value"] > 0.85


def test_too_few_held_out_examples_skip_with_the_number_needed(
    real_context: CheckContext,
) -> None:
    test = real_context.split.test
    few = np.concatenate([test[real_context.labels[test] == k][:3] for k in (0, 1)])  # 3 per class
    ctx = replace(real_context, split=real_context.split._replace(test=np.sort(few)))
    result = check.run(ctx, THRESHOLDS)
    assert result.verdict == "skipped"
    assert "needs at least 10 held-out examples of each class" in result.reason
    assert "has 3" in result.reason


def test_paired_difference_of_identical_scores_is_exactly_zero() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 80)
    scores = labels + rng.normal(size=80)
    diff = bootstrap_auroc_difference(scores, scores, labels, n_boot=100)
    assert (diff.value, diff.low, diff.high) == (0.0, 0.0, 0.0)
    flipped = bootstrap_auroc_difference(scores, -scores, labels, n_boot=100)
    assert flipped.low > 0


def test_random_backbone_is_probed_with_the_trained_layers_strengths(
    real_context: CheckContext,
) -> None:
    strengths = check.same_strengths(real_context.sweep)
    assert set(strengths) == {k for k in real_context.sweep.fitted if k[0] == "logistic"}
    for key, params in strengths.items():
        assert params["Cs"] == (real_context.sweep.fitted[key].C_,)
