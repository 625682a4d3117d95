"""The activation store: computed once, read with zero forwards, corrupt shards recomputed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from probes import ActivationStore, Backbone, InvalidInputError

TEXTS = ["a fine film", "a dreadful film", "the plot meanders", "stunning and warm", "flat"]


def test_second_get_runs_zero_forwards(backbone: Backbone, tmp_path) -> None:
    store = ActivationStore(tmp_path)
    first = store.get(backbone, TEXTS, poolings=("mean", "tokens"), progress=False)
    before = backbone.n_forward_passes
    second = store.get(backbone, TEXTS, poolings=("mean", "tokens"), progress=False)
    assert backbone.n_forward_passes == before  # zero forward passes
    for key, value in first.pooled.items():
        np.testing.assert_array_equal(value, second.pooled[key])
    hook = backbone.resid_hooks()[-1]
    np.testing.assert_array_equal(first.tokens[hook].values, second.tokens[hook].values)
    np.testing.assert_array_equal(first.n_tokens, second.n_tokens)


def test_only_missing_shards_are_computed(backbone: Backbone, tmp_path) -> None:
    store = ActivationStore(tmp_path)
    hooks = backbone.resid_hooks()
    store.get(backbone, TEXTS, hooks[:2], progress=False)
    before = backbone.n_forward_passes
    out = store.get(backbone, TEXTS, hooks[:3], progress=False)
    assert backbone.n_forward_passes == before + 1  # one batch, for the missing hook only
    assert set(out.pooled) == {(h, "mean") for h in hooks[:3]}


@pytest.mark.parametrize("damage", ["truncate", "flip", "drop_meta_field", "garbage_meta"])
def test_corrupt_shard_is_recomputed_never_read(backbone: Backbone, tmp_path, damage: str) -> None:
    store = ActivationStore(tmp_path)
    hook = backbone.resid_hooks()[0]
    good = store.get(backbone, TEXTS, [hook], progress=False).pooled[(hook, "mean")]
    data = next(tmp_path.rglob(f"{hook}.mean.*.safetensors"))
    meta = data.with_suffix(".json")
    if damage == "truncate":
        data.write_bytes(data.read_bytes()[:-100])
    elif damage == "flip":
        raw = bytearray(data.read_bytes())
        raw[-5] ^= 0x55
        data.write_bytes(bytes(raw))
    elif damage == "drop_meta_field":
        body = json.loads(meta.read_text())
        del body["sha256"]
        meta.write_text(json.dumps(body))
    else:
        meta.write_text("{not json")
    before = backbone.n_forward_passes
    again = store.get(backbone, TEXTS, [hook], progress=False).pooled[(hook, "mean")]
    assert backbone.n_forward_passes > before
    assert store.n_recomputed_corrupt == 1
    np.testing.assert_allclose(again, good, atol=1e-6)


def test_another_backbone_fingerprint_never_shares_shards(backbone: Backbone, tmp_path) -> None:
    store = ActivationStore(tmp_path)
    store.get(backbone, TEXTS, backbone.resid_hooks()[:1], progress=False)
    other = Backbone(backbone.bridge, name="other", fingerprint="0" * 16)
    before = other.n_forward_passes
    store.get(other, TEXTS, backbone.resid_hooks()[:1], progress=False)
    assert other.n_forward_passes == before + 1


def test_list_and_prune(backbone: Backbone, tmp_path) -> None:
    store = ActivationStore(tmp_path)
    store.get(backbone, TEXTS, backbone.resid_hooks()[:2], progress=False, dataset_name="tiny")
    (tmp_path / backbone.fingerprint / ".left-over.tmp").write_bytes(b"x" * 10)
    shards = store.list()
    assert {s.key.hook_name for s in shards} >= set(backbone.resid_hooks()[:2])
    assert all(s.dataset == "tiny" and s.n_texts == len(TEXTS) for s in shards)
    with pytest.raises(InvalidInputError, match="filter"):
        store.prune()
    assert store.prune(fingerprint="ffffffffffffffff") == (0, 0) or store.list()
    n, freed = store.prune(fingerprint=backbone.fingerprint)
    assert n == len(shards) and freed > 0
    assert store.list() == []
    assert not list(tmp_path.rglob("*.tmp"))
