"""Batch planning (padding share of token slots), random-architecture backbones, GPU peak tables."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audit.bench import forward_cost, gpu_peak, mixed_corpus
from probes import Backbone, InvalidInputError
from probes.backbone import padding_fraction, plan_batches


@pytest.fixture(scope="module")
def corpus_lengths(backbone: Backbone) -> np.ndarray:
    return backbone.tokenize(mixed_corpus(200, seed=3)).lengths


def test_planned_batches_cover_every_text_once_and_cut_padding(corpus_lengths) -> None:
    lengths = corpus_lengths
    planned = plan_batches(lengths, 32)
    fixed = plan_batches(lengths, 32, max_padding=None)
    corpus = [np.arange(i, min(i + 32, len(lengths))) for i in range(0, len(lengths), 32)]
    for plan in (planned, fixed):
        assert sorted(np.concatenate(plan).tolist()) == list(range(len(lengths)))
        assert max(len(b) for b in plan) <= 32
    # A real mixed corpus: reviews of a few tokens next to requests of hundreds.
    assert np.percentile(lengths, 90) > 4 * np.percentile(lengths, 10)
    waste = {
        k: padding_fraction(lengths, p)
        for k, p in [("planned", planned), ("fixed", fixed), ("corpus", corpus)]
    }
    assert waste["planned"] < 0.10 < waste["fixed"] < waste["corpus"], waste
    assert all(len(b) == 32 for b in fixed[:-1])


def test_small_inputs_stay_in_one_batch_and_bad_settings_are_refused() -> None:
    assert len(plan_batches(np.array([6, 6, 5, 5, 3]), 32)) == 1  # under 512 slots: one forward
    assert padding_fraction(np.array([4, 2]), [np.array([0, 1])]) == pytest.approx(0.25)
    with pytest.raises(InvalidInputError, match="max_padding"):
        plan_batches(np.array([3]), 4, max_padding=1.5)
    with pytest.raises(InvalidInputError, match="batch_size"):
        plan_batches(np.array([3]), 0)


def test_planned_extraction_matches_fixed_batches(backbone: Backbone) -> None:
    texts = mixed_corpus(24, seed=5)
    hooks = backbone.resid_hooks()[-2:]
    planned = backbone.extract(texts, hooks, ("mean", "tokens"), batch_size=8, progress=False)
    fixed = backbone.extract(
        texts, hooks, ("mean", "tokens"), batch_size=8, progress=False, max_padding=None
    )
    for key, values in planned.pooled.items():
        np.testing.assert_allclose(values, fixed.pooled[key], atol=1e-5)
    for hook, ragged in planned.tokens.items():
        np.testing.assert_array_equal(ragged.offsets, fixed.tokens[hook].offsets)
        np.testing.assert_allclose(ragged.values, fixed.tokens[hook].values, atol=1e-5)


def test_random_architecture_backbone_is_named_random_and_extracts() -> None:
    bb = Backbone.load("random:gpt2-tiny", seed=1)
    assert bb.name == "random-gpt2-tiny-1" and bb.fingerprint.startswith("random-")
    assert bb.folder is None and (bb.n_layers, bb.d_model) == (2, 64)
    assert Backbone.load("random-gpt2-tiny", seed=1).fingerprint == bb.fingerprint
    out = bb.extract(["a fine film", "the plot meanders for an hour"], progress=False)
    assert out.pooled[("blocks.1.hook_resid_post", "mean")].shape == (2, 64)
    with pytest.raises(InvalidInputError, match="random:gpt2-medium"):
        Backbone.load("random:gpt9")


def test_gpu_peak_table_env_override_and_forward_cost(backbone: Backbone, monkeypatch) -> None:
    assert gpu_peak("NVIDIA H200", torch.bfloat16) == (989.0, 4.8)
    assert gpu_peak("NVIDIA A100-SXM4-80GB", torch.float32)[0] in (19.5, 156.0)
    assert gpu_peak("Some Future GPU", torch.float32) == (None, None)
    monkeypatch.setenv("AUDIT_GPU_PEAK_TFLOPS", "100")
    monkeypatch.setenv("AUDIT_GPU_BANDWIDTH_TBS", "2.5")
    assert gpu_peak("Some Future GPU", torch.float32) == (100.0, 2.5)
    lengths = np.array([10, 10, 5, 5])
    one = forward_cost(backbone, lengths, [np.array([0, 1])])
    two = forward_cost(backbone, lengths, [np.array([0, 1]), np.array([2, 3])])
    params = sum(p.numel() for b in backbone.bridge.blocks for p in b.parameters())
    assert one[0] >= 2 * params * 20 and two[0] > one[0] and two[1] > one[1]
