"""Tenant heads train on stored activations, reload exactly, and refuse what does not fit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from audit.tenants.heads import HeadSpec, load_head, save_head, train_head
from probes import Backbone, CorruptArtifactError, FingerprintMismatchError, InvalidInputError
from probes.hooks import resid_post


def _inputs(backbone: Backbone, head, texts):
    if head.reads_tokens:
        ext = backbone.extract(texts, [head.input_hook], ("tokens",), progress=False)
        return ext.tokens[head.input_hook].padded(range(len(texts)))
    ext = backbone.extract(texts, [head.input_hook], (head.meta.pooling,), progress=False)
    return torch.from_numpy(ext.pooled[(head.input_hook, head.meta.pooling)]), None


def test_heads_learn_sentiment_and_report_metrics(trained_heads) -> None:
    for name in ("linear_last", "linear_l2", "mlp"):
        metrics = trained_heads[name].meta.metrics
        assert metrics["val_auroc"] > 0.75, (name, metrics)
        assert 1 <= metrics["best_epoch"] <= metrics["epochs_run"] <= 30
        assert metrics["n_train"] + metrics["n_val"] == 400
        assert len(metrics["history"]) == metrics["epochs_run"]
    blocks = trained_heads["blocks"].meta.metrics
    assert blocks["val_auroc"] > 0.7, blocks
    assert trained_heads["blocks"].input_hook == resid_post(4)  # enters block 5 of 6


def test_training_reads_stored_activations(backbone, tenant_store, sentiment_rows) -> None:
    texts, labels = sentiment_rows
    before = backbone.n_forward_passes
    head = train_head(
        backbone,
        tenant_store,
        texts,
        labels,
        HeadSpec("linear", seed=1),
        tenant_id="t",
        head_id="h_again",
        progress=False,
    )
    assert backbone.n_forward_passes == before  # the corpus was stored by the session fixture
    again = train_head(
        backbone,
        tenant_store,
        texts,
        labels,
        HeadSpec("linear", seed=1),
        tenant_id="t",
        head_id="h_again",
        progress=False,
    )
    for a, b in zip(
        head.module.state_dict().values(), again.module.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b)  # seeded: the same head twice


def test_untrained_block_copy_reproduces_the_backbone(backbone: Backbone) -> None:
    from audit.tenants.heads import BlocksHead

    texts = ["A quiet, moving film.", "Dull and far too long, with nothing to say at all."]
    module = BlocksHead(backbone, 2, 2, "mean", "classification")
    ext = backbone.extract(texts, [resid_post(3), resid_post(5)], ("tokens",), progress=False)
    acts, mask = ext.tokens[resid_post(3)].padded(range(2))
    with torch.no_grad():
        out = module.runner(acts, mask)[resid_post(5)]
    want, _ = ext.tokens[resid_post(5)].padded(range(2))
    torch.testing.assert_close(out * mask[..., None], want, atol=2e-5, rtol=1e-5)
    assert all(p.requires_grad for p in module.blocks.parameters())
    assert not any(p.requires_grad for p in backbone.bridge.parameters())


@pytest.mark.parametrize("name", ["linear_last", "mlp", "blocks"])
def test_saved_heads_reload_exactly(trained_heads, backbone, tmp_path, name) -> None:
    head = trained_heads[name]
    folder = save_head(head, tmp_path / name)
    meta = json.loads((folder / "head.json").read_text())
    assert meta["backbone_fingerprint"] == backbone.fingerprint
    assert meta["schema_version"] == 1 and meta["tenant_id"] == "t_test"
    loaded = load_head(folder, backbone)
    x, mask = _inputs(backbone, head, ["Worth every minute.", "A mess."])
    torch.testing.assert_close(loaded.logits(x, mask), head.logits(x, mask))
    assert [o.label for o in loaded.predict(x, mask)] == [o.label for o in head.predict(x, mask)]


def test_loading_refuses_other_backbones_and_broken_files(
    trained_heads, backbone, tmp_path
) -> None:
    folder = save_head(trained_heads["linear_last"], tmp_path / "h")
    meta = json.loads((folder / "head.json").read_text())
    other = dict(meta, backbone_fingerprint="0" * 64)
    (folder / "head.json").write_text(json.dumps(other))
    with pytest.raises(FingerprintMismatchError, match="Retrain"):
        load_head(folder, backbone)
    assert load_head(folder, backbone, allow_mismatch=True).meta.head_id == "h_linear_last"
    # Tensors that do not match the metadata (three outputs claimed, two saved).
    (folder / "head.json").write_text(json.dumps(dict(meta, n_outputs=3)))
    with pytest.raises(CorruptArtifactError, match="do not match"):
        load_head(folder, backbone)
    (folder / "head.json").write_text(json.dumps(meta))
    tensors = load_file(str(folder / "head.safetensors"))
    tensors["net.weight"] = tensors["net.weight"][:, :100].contiguous()
    save_file(tensors, str(folder / "head.safetensors"))
    with pytest.raises(CorruptArtifactError, match="do not match"):
        load_head(folder, backbone)
    (folder / "head.safetensors").write_bytes(b"\x80\x04not a safetensors file")
    with pytest.raises(CorruptArtifactError, match="safetensors"):
        load_head(folder, backbone)
    (folder / "head.json").write_text("{")
    with pytest.raises(CorruptArtifactError, match="metadata"):
        load_head(folder, backbone)
    with pytest.raises(CorruptArtifactError, match="expected"):
        load_head(tmp_path / "missing", backbone)


def test_regression_heads_predict_values(backbone, tenant_store, sentiment_rows) -> None:
    texts, labels = sentiment_rows
    scores = [4.0 if label == "positive" else -2.0 for label in labels]  # a star-like rating
    head = train_head(
        backbone,
        tenant_store,
        texts,
        scores,
        HeadSpec("linear", task="regression"),
        tenant_id="t",
        head_id="h_rating",
        progress=False,
    )
    assert head.meta.metrics["val_r2"] > 0.1, head.meta.metrics
    assert head.meta.target_scale == pytest.approx(3.0, rel=0.05)  # outputs in the labels' units
    x, _ = _inputs(backbone, head, ["A wonderful, moving film.", "An awful, boring mess."])
    values = [o.value for o in head.predict(x)]
    assert values[0] > 1.0 > values[1]


@pytest.mark.parametrize(
    ("spec", "labels", "match"),
    [
        (HeadSpec("tree"), None, "Unknown head kind"),
        (HeadSpec("linear", layer=6), None, r"in \[0, 5\]. Got 6"),
        (HeadSpec("blocks", k=6), None, r"'k' parameter .* \[1, 5\]"),
        (HeadSpec("linear", pooling="median"), None, "Unknown pooling"),
        (HeadSpec("linear", val_fraction=0.9), None, "val_fraction"),
        (HeadSpec("linear"), ["pos"] * 20, "at least two labels"),
        (HeadSpec("linear", task="regression"), ["pos", "neg"] * 10, "numeric labels"),
        (HeadSpec("linear"), ["pos", "neg"], "one label per text"),
    ],
)
def test_bad_specs_and_labels_are_refused(backbone, tenant_store, spec, labels, match) -> None:
    texts = [f"review number {i}" for i in range(20)]
    with pytest.raises(InvalidInputError, match=match):
        train_head(
            backbone,
            tenant_store,
            texts,
            labels or ["pos", "neg"] * 10,
            spec,
            tenant_id="t",
            head_id="h",
            progress=False,
        )


def test_head_sizes_are_small_next_to_the_backbone(trained_heads, backbone) -> None:
    backbone_bytes = sum(p.numel() * 4 for p in backbone.bridge.original_model.parameters())
    assert trained_heads["linear_last"].nbytes < 10_000
    assert trained_heads["blocks"].nbytes < backbone_bytes / 5
    assert np.isfinite(trained_heads["mlp"].n_parameters)
