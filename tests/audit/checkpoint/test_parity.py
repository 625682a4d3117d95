"""Hook parity on the real backbones: the bridge matches HF, identities hold, breakage is caught."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from torch import nn

from audit.checkpoint.outcome import CheckOutcome
from audit.checkpoint.parity import ParityError, default_texts, parity_outcomes
from audit.checkpoint.spec import ParitySpec
from probes import Backbone

SPEC = ParitySpec()


def _by_id(outcomes: list[CheckOutcome]) -> dict[str, CheckOutcome]:
    ids = [o.check_id for o in outcomes]
    assert len(ids) == len(set(ids)), "check ids must be unique"
    return {o.check_id: o for o in outcomes}


def _failures(outcomes: list[CheckOutcome]) -> list[str]:
    return [o.message() for o in outcomes if not o.passed and o.skipped is None]


def _hook_count(backbone: Backbone) -> int:
    # The bridge keeps permanent hooks of its own (aliases, and HF's output recorders that it
    # installs on first use), so what is checked is that a parity run adds none.
    return sum(
        len(module._forward_hooks) + len(module._forward_pre_hooks)
        for module in backbone.bridge.modules()
    )


@contextmanager
def _noisy_output(module: nn.Module, scale: float = 0.1) -> Iterator[None]:
    """Add seeded noise to what ``module`` hands on, after its own hooks have recorded it."""
    generator = torch.Generator().manual_seed(0)

    def perturb(_module: nn.Module, _args: object, output: object) -> object:
        first = output[0] if isinstance(output, tuple) else output
        assert isinstance(first, torch.Tensor)
        noise = torch.randn(first.shape, generator=generator) * float(first.std()) * scale
        noisy = first + noise.to(first.dtype)
        return (noisy, *output[1:]) if isinstance(output, tuple) else noisy

    handle = module.register_forward_hook(perturb)
    try:
        yield
    finally:
        handle.remove()


def _tokens(backbone: Backbone, texts: list[str]) -> int:
    return int(backbone.tokenize(texts).lengths.sum())


# --------------------------------------------------------------------------- MiniLM (post-LN)
def test_minilm_passes_with_post_ln_identities(backbone: Backbone) -> None:
    parity_outcomes(backbone, SPEC, default_texts(1))
    hooks_before = _hook_count(backbone)
    outcomes = parity_outcomes(backbone, SPEC)
    assert _hook_count(backbone) == hooks_before
    assert not _failures(outcomes), _failures(outcomes)
    checks = _by_id(outcomes)
    n_tokens = _tokens(backbone, default_texts(SPEC.n_texts))
    hidden = ["parity::hidden_states@embed"] + [f"parity::hidden_states@L{i}" for i in range(6)]
    for check_id in hidden:
        outcome = checks[check_id]
        assert outcome.n == n_tokens
        assert outcome.expected.comparison == ">=" and outcome.expected.bound == SPEC.min_cosine
        assert outcome.measured >= 0.9999 and outcome.details["max_abs_diff"] < 1e-4
    # BERT's hidden states are the block outputs themselves (no final norm in between).
    assert checks["parity::hidden_states@L5"].details["bridge_hook"] == "blocks.5.hook_resid_post"
    embed = checks["parity::hidden_states@embed"]
    assert (embed.details["hf_hidden_state"], embed.details["bridge_hook"]) == (
        0,
        "embed_ln.hook_out",
    )
    for layer in range(6):
        assert "ln1(" in checks[f"parity::attn_residual@L{layer}"].details["relation"]
        assert f"parity::mlp_sum@L{layer}" in checks
        assert "ln2(" in checks[f"parity::mlp_norm@L{layer}"].details["relation"]
        assert f"parity::mlp_residual@L{layer}" not in checks  # a pre-LN relation
    assert [f"parity::resid_chain@L{i}" for i in range(5)] == sorted(
        c for c in checks if c.startswith("parity::resid_chain")
    )
    assert "parity::final_norm_input" not in checks
    assert all(o.details["architecture"] == "bert (post-LN)" for o in outcomes)


def test_pre_ln_relation_really_fails_on_minilm(backbone: Backbone) -> None:
    # Why MiniLM gets no ``resid_pre + attn_out == resid_mid`` check: on a post-LN model it is
    # simply false, by a wide margin.
    batch = backbone.tokenize(["The city of Paris is in France."])
    wanted = {f"blocks.2.{h}" for h in ("hook_resid_pre", "hook_attn_out", "hook_resid_mid")}
    _, cache = backbone.bridge.run_with_cache(
        batch.input_ids,
        attention_mask=batch.attention_mask,
        names_filter=lambda n: n in wanted,
    )
    gap = cache["blocks.2.hook_resid_pre"] + cache["blocks.2.hook_attn_out"]
    assert float((gap - cache["blocks.2.hook_resid_mid"]).abs().max()) > 1.0


def test_default_texts_follow_the_spec(backbone: Backbone) -> None:
    spec = ParitySpec(n_texts=3)
    outcomes = parity_outcomes(backbone, spec)
    assert {o.n for o in outcomes} == {_tokens(backbone, default_texts(3))}
    long = default_texts(40)
    assert len(long) == len(set(long)) == 40


def test_given_texts_are_used_and_padding_stays_out(backbone: Backbone) -> None:
    texts = ["No.", "A much longer sentence, so that the short one is padded in its batch."]
    together = _by_id(parity_outcomes(backbone, SPEC, texts))
    apart = [_by_id(parity_outcomes(backbone, SPEC, [t])) for t in texts]
    assert together["parity::hidden_states@L2"].n == _tokens(backbone, texts)
    for check_id, outcome in together.items():
        assert outcome.passed, outcome.message()
        assert outcome.n == sum(a[check_id].n or 0 for a in apart)


def test_perturbed_block_is_caught_with_its_layer_named(backbone: Backbone) -> None:
    parity_outcomes(backbone, SPEC, default_texts(1))
    hooks_before = _hook_count(backbone)
    with _noisy_output(backbone.bridge.blocks[3].attn):
        outcomes = parity_outcomes(backbone, SPEC)
    assert _hook_count(backbone) == hooks_before
    checks = _by_id(outcomes)
    failed = {o.check_id for o in outcomes if not o.passed}
    # The noise enters after block 3's attention hook recorded its output: every hidden state
    # from block 3 on disagrees with HF, and block 3's own sum no longer matches its hooks.
    assert {f"parity::hidden_states@L{i}" for i in (3, 4, 5)} <= failed
    assert "parity::mlp_sum@L3" in failed
    assert not any(c.endswith(("@L0", "@L1", "@L2", "@embed")) for c in failed), failed
    message = checks["parity::hidden_states@L3"].message()
    assert "FAILED" in message and "blocks.3.hook_resid_post" in message
    # Once the hook is gone the same backbone passes again.
    assert not _failures(parity_outcomes(backbone, SPEC, default_texts(2)))


def test_reference_checkpoint_is_compared(backbone: Backbone) -> None:
    from transformers import AutoModel

    assert backbone.folder is not None
    reference = AutoModel.from_pretrained(backbone.folder).eval()
    # The same checkpoint loaded on its own, with HF's default attention kernel, agrees.
    assert not _failures(parity_outcomes(backbone, SPEC, reference=reference))
    with torch.no_grad():
        weight = reference.encoder.layer[4].output.dense.weight
        weight += torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)) * 0.05
    outcomes = parity_outcomes(backbone, SPEC, reference=reference)
    failed = {o.check_id for o in outcomes if not o.passed}
    assert failed == {"parity::hidden_states@L4", "parity::hidden_states@L5"}


def test_bad_input_is_refused(backbone: Backbone) -> None:
    with pytest.raises(ParityError, match="non-empty"):
        parity_outcomes(backbone, SPEC, [])
    with pytest.raises(ParityError, match="non-empty"):
        parity_outcomes(backbone, SPEC, ["fine", "  "])
    with pytest.raises(ParityError, match="batch_size"):
        parity_outcomes(backbone, SPEC, ["fine"], batch_size=0)
    with pytest.raises(ParityError, match="3 hidden states"):
        # A model of another depth cannot be the reference.
        parity_outcomes(backbone, SPEC, ["fine"], reference=_truncated_bert(backbone))


def _truncated_bert(backbone: Backbone) -> nn.Module:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(backbone.folder, num_hidden_layers=2)
    return model.eval()


# --------------------------------------------------------------------------- unknown architecture
def test_unknown_architecture_gets_hidden_states_and_a_skip(
    backbone: Backbone, tmp_path: Path
) -> None:
    # A tiny random GPT-NeoX with parallel attention and MLP: no resid_mid at all, so neither
    # family's identities would be right for it.
    from transformers import GPTNeoXConfig

    assert backbone.folder is not None
    folder = tmp_path / "neox"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(backbone.folder / name, folder / name)
    GPTNeoXConfig(
        vocab_size=backbone.tokenizer.vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=128,
        use_parallel_residual=True,
    ).save_pretrained(folder)
    neox = Backbone.load(str(folder), weights="random")
    outcomes = parity_outcomes(neox, SPEC, default_texts(4))
    checks = _by_id(outcomes)
    assert sorted(checks) == [
        "parity::hidden_states@L0",
        "parity::hidden_states@L1",
        "parity::hidden_states@embed",
        "parity::residual_identities",
    ]
    skip = checks["parity::residual_identities"]
    assert not skip.passed and skip.skipped and "gpt_neox" in skip.skipped
    for check_id in ("parity::hidden_states@embed", "parity::hidden_states@L0"):
        assert checks[check_id].passed, checks[check_id].message()
        assert "skipped" in checks[check_id].details["identity_checks"]
    # GPT-NeoX reports its last hidden state after the final norm; the closer bridge hook wins.
    last = checks["parity::hidden_states@L1"]
    assert last.passed, last.message()
    assert last.details["bridge_hook"] == "ln_final.hook_out"
    assert last.details["candidates"]["blocks.1.hook_resid_post"] < SPEC.min_cosine


# --------------------------------------------------------------------------- SmolLM2 (pre-LN)
@pytest.mark.slow
def test_smollm2_passes_with_pre_ln_identities_and_catches_a_perturbation(
    decoder: Backbone,
) -> None:
    texts = default_texts(SPEC.n_texts)
    outcomes = parity_outcomes(decoder, SPEC, texts)
    assert not _failures(outcomes), _failures(outcomes)
    checks = _by_id(outcomes)
    n_layers = decoder.n_layers
    for layer in range(n_layers):
        assert f"parity::hidden_states@L{layer}" in checks
        relation = checks[f"parity::attn_residual@L{layer}"].details["relation"]
        assert relation == (
            f"blocks.{layer}.hook_resid_pre + blocks.{layer}.hook_attn_out == "
            f"blocks.{layer}.hook_resid_mid"
        )
        assert f"parity::mlp_residual@L{layer}" in checks
        assert f"parity::mlp_norm@L{layer}" not in checks  # a post-LN relation
    # Llama's last hidden state is the final norm's output, whose input is the last block's.
    last = checks[f"parity::hidden_states@L{n_layers - 1}"]
    assert last.details["bridge_hook"] == "ln_final.hook_out"
    assert checks["parity::final_norm_input"].passed
    assert all(o.details["architecture"] == "llama (pre-LN)" for o in outcomes)

    hooks_before = _hook_count(decoder)
    with _noisy_output(decoder.bridge.blocks[3].attn):
        broken = parity_outcomes(decoder, SPEC, texts[:2])
    assert _hook_count(decoder) == hooks_before
    failed = {o.check_id for o in broken if not o.passed}
    assert {"parity::attn_residual@L3", "parity::hidden_states@L3"} <= failed
    assert not any(c.endswith(("@L0", "@L1", "@L2", "@embed")) for c in failed), failed


def test_planned_ids_are_the_measured_ones(backbone) -> None:
    from audit.checkpoint.parity import planned_parity_ids
    from audit.checkpoint.runner import checkpoint_config

    model_type, n_layers = checkpoint_config(backbone.folder)
    outcomes = parity_outcomes(backbone, ParitySpec(n_texts=2))
    assert planned_parity_ids(model_type, n_layers) == [o.check_id for o in outcomes]
    assert planned_parity_ids("gpt_neox", 2)[-1] == "parity::residual_identities"
