"""Backbone.load(weights="random"): same architecture, fresh seeded weights, its own fingerprint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probes import ActivationStore, Backbone, InvalidInputError
from probes.backbone import fingerprint_state

TEXTS = ["I loved this movie, it was great.", "The city of Paris is in France."]


@pytest.fixture(scope="module")
def random_bb() -> Backbone:
    return Backbone.load("minilm", weights="random", seed=0)


def test_random_backbone_is_named_and_fingerprinted_by_its_weights(
    backbone: Backbone, random_bb: Backbone
) -> None:
    assert random_bb.name == "minilm-random-0"
    assert random_bb.folder is None  # the package folder's weights are not its weights
    model = random_bb.bridge.original_model
    assert random_bb.fingerprint == fingerprint_state(model, model.config.to_json_string())
    assert random_bb.fingerprint != backbone.fingerprint
    assert not random_bb.bridge.training and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert (random_bb.n_layers, random_bb.d_model) == (backbone.n_layers, backbone.d_model)


def test_every_encoder_weight_is_new_and_nothing_is_shared(
    backbone: Backbone, random_bb: Backbone
) -> None:
    trained = backbone.bridge.original_model.state_dict()
    fresh = random_bb.bridge.original_model.state_dict()
    assert trained.keys() == fresh.keys()
    # The MLM head ("cls.") is not in the sentence-transformers checkpoint: the pretrained boot
    # initialises it too, so only the encoder, which every probe reads, must differ.
    encoder = [k for k in fresh if not k.startswith("cls.")]
    for kind in ("LayerNorm", "embeddings", "query", "dense"):
        assert any(kind in k for k in encoder), kind
    unchanged = [
        k for k in encoder if fresh[k].is_floating_point() and torch.equal(fresh[k], trained[k])
    ]
    assert unchanged == []
    trained_ptrs = {p.data_ptr() for p in backbone.bridge.original_model.parameters()}
    fresh_ptrs = {p.data_ptr() for p in random_bb.bridge.original_model.parameters()}
    assert trained_ptrs.isdisjoint(fresh_ptrs)
    # The plain twin reads the random weights, not a copy and not the pretrained ones.
    twin_ptrs = {p.data_ptr() for p in random_bb._plain.parameters()}
    assert twin_ptrs <= fresh_ptrs


def test_seed_decides_the_weights_and_pretrained_and_rng_are_untouched(
    backbone: Backbone, random_bb: Backbone
) -> None:
    model = backbone.bridge.original_model
    before = fingerprint_state(model, "")
    rng_state = torch.random.get_rng_state()
    again = Backbone.load("minilm", weights="random", seed=0)
    other = Backbone.load("minilm", weights="random", seed=1)
    assert again.fingerprint == random_bb.fingerprint
    assert other.fingerprint != random_bb.fingerprint
    assert other.name == "minilm-random-1"
    assert torch.equal(torch.random.get_rng_state(), rng_state)
    assert fingerprint_state(model, "") == before


def test_random_activations_differ_and_both_paths_agree(
    backbone: Backbone, random_bb: Backbone
) -> None:
    ours = random_bb.extract(TEXTS, poolings=("tokens",), progress=False)
    trained = backbone.extract(TEXTS, poolings=("tokens",), progress=False)
    _, cache = random_bb.bridge.run_with_cache(
        TEXTS, names_filter=lambda n: n.endswith("hook_resid_post"), stop_at_layer=6
    )
    lengths = random_bb.tokenize(TEXTS).lengths
    for hook in random_bb.resid_hooks():
        assert np.isfinite(ours.tokens[hook].values).all()
        assert not np.allclose(ours.tokens[hook].values, trained.tokens[hook].values, atol=1e-2)
        for i in range(len(TEXTS)):
            np.testing.assert_allclose(
                ours.tokens[hook].text(i), cache[hook][i, : lengths[i]].numpy(), atol=1e-4
            )


def test_store_keeps_random_and_pretrained_activations_apart(
    backbone: Backbone, random_bb: Backbone, tmp_path
) -> None:
    store = ActivationStore(tmp_path)
    hooks = [backbone.resid_hooks()[0]]
    fresh = store.get(random_bb, TEXTS, hooks, progress=False)
    passes = backbone.n_forward_passes
    trained = store.get(backbone, TEXTS, hooks, progress=False)
    assert backbone.n_forward_passes > passes  # not served from the random backbone's shards
    key = (hooks[0], "mean")
    assert not np.allclose(fresh.pooled[key], trained.pooled[key])
    assert {s.key.fingerprint for s in store.list()} == {
        random_bb.fingerprint,
        backbone.fingerprint,
    }


def test_unknown_weights_value_is_a_clear_error() -> None:
    with pytest.raises(InvalidInputError, match="'pretrained' or 'random'. Got 'zeros'"):
        Backbone.load("minilm", weights="zeros")
