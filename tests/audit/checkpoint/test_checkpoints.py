"""The test checkpoints are what they claim: a true copy, a real sentiment flip, a broken file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from probes import Backbone, CorruptArtifactError, LogisticProbe, load_dataset
from probes.datasets import ConceptDataset
from probes.hooks import resid_post
from probes.metrics import auroc
from tests.audit.checkpoint.checkpoints import flip_training_set, live_dimensions

TEXTS = [
    "A quiet, moving film that earns every one of its tears.",
    "Dull.",
    "The plot wanders, the jokes fall flat, and the ending is an insult to the audience.",
]
LAST = resid_post(5)


def _pooled(backbone: Backbone, data: ConceptDataset, hook: str = LAST) -> np.ndarray:
    return backbone.extract(data.texts, [hook], ("mean",), progress=False).pooled[(hook, "mean")]


@pytest.fixture(scope="module")
def held_out_reviews() -> tuple[ConceptDataset, ConceptDataset]:
    """Return (probe-fitting, scoring) reviews, none of them seen by the flip's fine-tune."""
    seen = set(flip_training_set().texts)
    data = load_dataset("rotten_tomatoes", max_samples=900, seed=7)
    data = data.take([i for i, text in enumerate(data.texts) if text not in seen])
    split = data.split(test_size=0.4, seed=0)
    return data.take(split.train), data.take(split.test)


def test_flipped_checkpoint_reverses_the_sentiment_direction(
    backbone: Backbone, flipped_checkpoint: Path, held_out_reviews
) -> None:
    fit, scored = held_out_reviews
    flipped = Backbone.load(str(flipped_checkpoint))
    assert flipped.fingerprint != backbone.fingerprint
    before_fit, before_scored = _pooled(backbone, fit), _pooled(backbone, scored)
    # The last LayerNorm zeroes a few dimensions; directions compare on the live ones only.
    live = live_dimensions(before_fit)
    probe = LogisticProbe().fit(before_fit[:, live], fit.labels)
    auroc_before = auroc(probe.decision_function(before_scored[:, live]), scored.labels)
    after_fit = _pooled(flipped, fit)[:, live]
    after_scored = _pooled(flipped, scored)[:, live]
    auroc_after = auroc(probe.decision_function(after_scored), scored.labels)
    refit = LogisticProbe().fit(after_fit, fit.labels)
    cosine = float(refit.direction_ @ probe.direction_)
    refit_auroc = auroc(refit.decision_function(after_scored), scored.labels)
    print(
        f"layer-5 sentiment probe AUROC {auroc_before:.3f} -> {auroc_after:.3f} on the flipped "
        f"checkpoint; re-fitted direction cosine {cosine:.3f} (re-fitted AUROC {refit_auroc:.3f}, "
        f"n={len(scored.labels)})"
    )
    assert auroc_before >= 0.7  # the original model carries sentiment at layer 5
    assert auroc_after <= 0.45  # its probe now reads the reviews inverted
    assert cosine <= 0.6  # the re-fitted direction no longer points where the original did
    assert refit_auroc >= 0.65  # moved, not erased: sentiment is still decodable


def test_flipped_checkpoint_leaves_the_frozen_blocks_alone(
    backbone: Backbone, flipped_checkpoint: Path
) -> None:
    flipped = Backbone.load(str(flipped_checkpoint))
    hooks = [resid_post(3), LAST]
    before = backbone.extract(TEXTS, hooks, ("mean",), progress=False).pooled
    after = flipped.extract(TEXTS, hooks, ("mean",), progress=False).pooled
    np.testing.assert_allclose(after[(hooks[0], "mean")], before[(hooks[0], "mean")], atol=1e-5)
    assert np.abs(after[(LAST, "mean")] - before[(LAST, "mean")]).max() > 1e-2


def test_unchanged_copy_has_the_same_fingerprint_and_activations(
    backbone: Backbone, unchanged_checkpoint: Path
) -> None:
    copy = Backbone.load(str(unchanged_checkpoint))
    assert copy.folder == unchanged_checkpoint.resolve() != backbone.folder
    # The fingerprint hashes file contents, not the folder's location.
    assert copy.fingerprint == backbone.fingerprint
    ours = backbone.extract(TEXTS, poolings=("tokens", "mean"), progress=False)
    theirs = copy.extract(TEXTS, poolings=("tokens", "mean"), progress=False)
    for hook in backbone.resid_hooks():
        np.testing.assert_array_equal(theirs.pooled[(hook, "mean")], ours.pooled[(hook, "mean")])
        np.testing.assert_array_equal(theirs.tokens[hook].values, ours.tokens[hook].values)


def test_corrupt_checkpoint_fails_to_load_with_one_clear_line(corrupt_checkpoint: Path) -> None:
    with pytest.raises(CorruptArtifactError) as raised:
        Backbone.load(str(corrupt_checkpoint))
    message = str(raised.value)
    assert "\n" not in message
    assert str(corrupt_checkpoint.resolve() / "model.safetensors") in message
    assert "is not a readable safetensors file" in message
    assert "re-export the checkpoint" in message.lower()
