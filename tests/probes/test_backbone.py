"""The real MiniLM backbone: extraction paths agree, padding is invisible, resume matches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probes import Backbone, InvalidInputError, UnknownNameError
from probes.backbone import fingerprint_folder

TEXTS = [
    "I loved this movie, it was great.",
    "Terrible.",
    "An okay film with some good parts and a lot of bad parts, I think, overall.",
    "The city of Paris is in France.",
]


def test_backbone_is_frozen_and_described(backbone: Backbone) -> None:
    assert not backbone.bridge.training
    assert not any(p.requires_grad for p in backbone.bridge.parameters())
    info = backbone.info()
    assert (info["n_layers"], info["d_model"], info["n_ctx"]) == (6, 384, 512)
    assert len(info["fingerprint"]) == 16
    assert backbone.resid_hooks()[0] == "blocks.0.hook_resid_post"


def test_fingerprint_is_stable_and_tracks_weights(backbone: Backbone, tmp_path) -> None:
    assert fingerprint_folder(backbone.folder) == backbone.fingerprint
    copy = tmp_path / "model"
    copy.mkdir()
    for name in ("config.json", "model.safetensors"):
        (copy / name).write_bytes((backbone.folder / name).read_bytes())
    assert fingerprint_folder(copy) == backbone.fingerprint
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF  # one changed weight byte is another backbone
    (copy / "model.safetensors").write_bytes(bytes(data))
    assert fingerprint_folder(copy) != backbone.fingerprint


@pytest.mark.parametrize("pooling", ["mean", "first", "last", "max"])
def test_alone_equals_inside_padded_batch(backbone: Backbone, pooling: str) -> None:
    batch = backbone.extract(TEXTS, poolings=(pooling,), progress=False)
    for i, text in enumerate(TEXTS):
        alone = backbone.extract([text], poolings=(pooling,), progress=False)
        for hook in backbone.resid_hooks():
            np.testing.assert_allclose(
                alone.pooled[(hook, pooling)][0], batch.pooled[(hook, pooling)][i], atol=1e-5
            )


def test_plain_path_equals_bridge_run_with_cache(backbone: Backbone) -> None:
    ours = backbone.extract(TEXTS, poolings=("tokens",), progress=False)
    _, cache = backbone.bridge.run_with_cache(
        TEXTS, names_filter=lambda n: n.endswith("hook_resid_post"), stop_at_layer=6
    )
    lengths = backbone.tokenize(TEXTS).lengths
    for hook in backbone.resid_hooks():
        for i in range(len(TEXTS)):
            np.testing.assert_allclose(
                ours.tokens[hook].text(i), cache[hook][i, : lengths[i]].numpy(), atol=1e-5
            )


def test_non_residual_hooks_go_through_the_bridge(backbone: Backbone) -> None:
    hooks = ["blocks.1.attn.hook_out", "blocks.1.hook_resid_post"]
    mixed = backbone.extract(TEXTS, hooks, ("mean",), progress=False)
    plain = backbone.extract(TEXTS, hooks[1:], ("mean",), progress=False)
    assert mixed.pooled[(hooks[0], "mean")].shape == (len(TEXTS), 384)
    np.testing.assert_allclose(
        mixed.pooled[(hooks[1], "mean")], plain.pooled[(hooks[1], "mean")], atol=1e-5
    )


def test_resid_pre_is_previous_resid_post(backbone: Backbone) -> None:
    out = backbone.extract(
        TEXTS, ["blocks.3.hook_resid_pre", "blocks.2.hook_resid_post"], progress=False
    )
    np.testing.assert_allclose(
        out.pooled[("blocks.3.hook_resid_pre", "mean")],
        out.pooled[("blocks.2.hook_resid_post", "mean")],
    )


def test_resume_from_stored_layer_matches_full_forward(backbone: Backbone) -> None:
    full = backbone.extract(TEXTS, poolings=("tokens",), progress=False)
    acts, mask = full.tokens["blocks.2.hook_resid_post"].padded(range(len(TEXTS)))
    before, tails = backbone.n_forward_passes, backbone.n_tail_passes
    out = backbone.resume(2, acts, mask, ["blocks.3.hook_resid_post", "blocks.5.hook_resid_post"])
    assert (backbone.n_forward_passes, backbone.n_tail_passes) == (before, tails + 1)
    for hook in ("blocks.3.hook_resid_post", "blocks.5.hook_resid_post"):
        for i in range(len(TEXTS)):
            n = int(mask[i].sum())
            np.testing.assert_allclose(
                out[hook][i, :n].numpy(), full.tokens[hook].text(i), atol=1e-5
            )
    # an edited activation changes what comes after it
    edited = backbone.resume(2, acts * 0.5, mask, ["blocks.5.hook_resid_post"])
    assert not torch.allclose(edited["blocks.5.hook_resid_post"], out["blocks.5.hook_resid_post"])


def test_truncation_is_counted(backbone: Backbone) -> None:
    short = Backbone(backbone.bridge, name="minilm", fingerprint=backbone.fingerprint, max_length=8)
    out = short.extract(
        ["one two", "one two three four five six seven eight nine ten"], progress=False
    )
    assert out.truncated.tolist() == [False, True]
    assert out.n_truncated == 1
    assert out.n_tokens.max() == 8


def test_forward_stops_at_the_deepest_requested_layer(backbone: Backbone) -> None:
    calls: list[int] = []
    handles = [
        layer.register_forward_hook(lambda *_a, i=i: calls.append(i))
        for i, layer in enumerate(backbone._plain_layers)
    ]
    try:
        backbone.extract(TEXTS[:1], ["blocks.1.hook_resid_post"], progress=False)
    finally:
        for h in handles:
            h.remove()
    assert calls == [0, 1]


@pytest.mark.parametrize(
    ("texts", "match"),
    [([""], "empty"), (["   "], "empty"), ([3], "str"), ([], "no texts|empty")],
)
def test_bad_texts_are_refused(backbone: Backbone, texts, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        backbone.extract(texts, progress=False)


def test_unknown_hook_lists_valid_ones(backbone: Backbone) -> None:
    with pytest.raises(UnknownNameError, match="blocks.5.hook_resid_post"):
        backbone.extract(TEXTS, ["blocks.9.hook_resid_post"], progress=False)
    with pytest.raises(UnknownNameError, match="pooling"):
        backbone.extract(TEXTS, poolings=("median",), progress=False)


def test_unknown_backbone_is_a_clear_error() -> None:
    with pytest.raises(InvalidInputError, match="bundled alias"):
        Backbone.load("no-such-org/no-such-model")


def test_forward_tokens_pads_or_trims_to_a_width(backbone: Backbone) -> None:
    batch = backbone.tokenize(TEXTS)
    hook = "blocks.1.hook_resid_post"
    longest = int(batch.lengths.max())
    acts, mask = backbone.forward_padded(TEXTS, [hook], width=longest + 8)
    again, mask2 = backbone.forward_tokens(
        batch.input_ids, batch.attention_mask, [hook], width=longest + 8
    )
    assert mask.shape[1] == longest + 8 and torch.equal(mask, mask2)
    assert torch.equal(acts[hook], again[hook])
    with pytest.raises(InvalidInputError, match="shorter than the longest row"):
        backbone.forward_tokens(batch.input_ids, batch.attention_mask, [hook], width=longest - 1)
