"""Language-model heads on the bundled decoder (SmolLM2-135M), fine-tuned on real tweets.

The corpus is the bundled tweets dataset (airlines and self-driving cars): a style and domain
far from the backbone's instruction data, so a one-block head learns it in a few epochs. Kept
small (64 texts cut to 20 tokens, k=1, 2 epochs) because SmolLM2 is slow on 2 CPU cores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from audit.tenants.heads import (
    Head,
    HeadSpec,
    build_module,
    load_head,
    save_head,
    train_head,
)
from audit.tenants.lm import MAX_NEW_TOKENS, generate, perplexity, train_lm_head
from probes import ActivationStore, Backbone, load_dataset
from probes.backbone import plan_batches
from probes.errors import FingerprintMismatchError, InvalidInputError

N_TEXTS = 64
EPOCHS = 2


@dataclass(frozen=True)
class Trained:
    head: Head
    corpus: list[str]
    store: ActivationStore
    epochs_seen: list[tuple[int, int]]
    extraction_forwards: int  # backbone forwards from the embeddings during training


@pytest.fixture(scope="module")
def smollm2() -> Backbone:
    return Backbone.load("smollm2", max_length=20)


@pytest.fixture(scope="module")
def trained(smollm2: Backbone, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    corpus = list(load_dataset("tweets", max_samples=N_TEXTS, seed=0).texts)
    store = ActivationStore(tmp_path_factory.mktemp("lm-store"))
    seen: list[tuple[int, int]] = []
    spec = HeadSpec(kind="blocks", task="lm", k=1, epochs=EPOCHS, lr=5e-4, batch_size=8)
    before = smollm2.n_forward_passes
    head = train_head(
        smollm2,
        store,
        corpus,
        None,
        spec,
        tenant_id="t_lm",
        head_id="h_lm",
        corpus_id="tweets",
        progress=False,
        on_epoch=lambda epoch, n_epochs, record: seen.append((epoch, n_epochs)),
    )
    return Trained(head, corpus, store, seen, smollm2.n_forward_passes - before)


def _stored(smollm2: Backbone, trained: Trained, rows: list[int]) -> tuple[torch.Tensor, ...]:
    """Return the stored activations entering the head for corpus ``rows``, and their mask."""
    hook = trained.head.input_hook
    tokens = trained.store.get(smollm2, trained.corpus, [hook], ("tokens",), progress=False)
    return tokens.tokens[hook].padded(rows)


def _real_positions_close(ours: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> None:
    for i in range(len(mask)):
        n = int(mask[i].sum())
        scale = max(float(ref[i, :n].abs().max()), 1.0)
        np.testing.assert_allclose(ours[i, :n].numpy(), ref[i, :n].numpy(), atol=2e-4 * scale)


# ------------------------------------------------------------------- fast: refusals
def test_lm_heads_need_blocks_on_a_decoder(backbone: Backbone, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="decoder backbone") as exc:
        HeadSpec(kind="blocks", task="lm").resolved(backbone)
    assert backbone.name in str(exc.value)
    with pytest.raises(InvalidInputError, match="kind='blocks'"):
        HeadSpec(kind="linear", task="lm").resolved(backbone)
    store = ActivationStore(tmp_path / "store")
    for train in (
        lambda: train_head(
            backbone, store, ["a b", "c d"], None, HeadSpec(kind="blocks", task="lm"),
            tenant_id="t", head_id="h",
        ),
        lambda: train_lm_head(
            backbone, store, ["a b", "c d"], HeadSpec(kind="blocks"), tenant_id="t", head_id="h"
        ),
    ):  # fmt: skip
        with pytest.raises(InvalidInputError, match="decoder backbone"):
            train()
    assert not list((tmp_path / "store").rglob("*.safetensors"))  # refused before extracting


def test_generate_and_perplexity_validate_their_inputs(backbone: Backbone) -> None:
    bad = [
        ({"prompt": ""}, "'prompt'"),
        ({"prompt": "   "}, "'prompt'"),
        ({"temperature": -0.5}, "'temperature'.*Got -0.5"),
        ({"temperature": float("nan")}, "'temperature'"),
        ({"max_new_tokens": 0}, "'max_new_tokens'.*Got 0"),
        ({"max_new_tokens": MAX_NEW_TOKENS + 1}, f"Got {MAX_NEW_TOKENS + 1}.*call generate again"),
        ({"max_new_tokens": 2.5}, "'max_new_tokens'"),
    ]
    for change, message in bad:
        kwargs = {"prompt": "The flight was", "max_new_tokens": 4, "temperature": 0.0, **change}
        prompt = kwargs.pop("prompt")
        with pytest.raises(InvalidInputError, match=message):
            generate(backbone, None, prompt, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="not a causal language model"):
        generate(backbone, None, "The flight was", max_new_tokens=2)
    with pytest.raises(InvalidInputError, match="not a causal language model"):
        perplexity(backbone, None, ["The flight was late."])


# ------------------------------------------------------------------ slow: SmolLM2
@pytest.mark.slow
def test_untrained_copy_reproduces_the_backbone(smollm2: Backbone, trained: Trained) -> None:
    meta = trained.head.meta
    untrained = Head(meta, build_module(meta, smollm2))
    texts = trained.corpus[:2]
    acts, mask = _stored(smollm2, trained, [0, 1])
    ours = untrained.logits(acts, mask)
    batch = smollm2.tokenize(texts)
    with torch.inference_mode():
        ref = smollm2.bridge.original_model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask
        ).logits
    assert ours.shape == ref.shape == (2, mask.shape[1], meta.n_outputs)
    _real_positions_close(ours, ref, mask)
    # perplexity(None) against the HF logits: shifted ids, then EOS after each text not cut.
    nll, count = 0.0, 0
    for i, n in enumerate(batch.lengths):
        logp = torch.log_softmax(ref[i, :n].double(), -1)
        targets = batch.input_ids[i, 1:n].tolist()
        if not batch.truncated[i]:
            targets.append(smollm2.tokenizer.eos_token_id)
        nll -= sum(float(logp[t, y]) for t, y in enumerate(targets))
        count += len(targets)
    assert perplexity(smollm2, None, texts) == pytest.approx(math.exp(nll / count), rel=1e-3)


@pytest.mark.slow
def test_training_lowers_held_out_perplexity(smollm2: Backbone, trained: Trained) -> None:
    meta, m = trained.head.meta, trained.head.meta.metrics
    assert (meta.kind, meta.task, meta.k, meta.label_names) == ("blocks", "lm", 1, [])
    assert meta.n_outputs == smollm2.tail(smollm2.n_layers - 1).unembed.weight.shape[0]
    assert meta.input_hook == f"blocks.{smollm2.n_layers - 2}.hook_resid_post"
    assert m["n_train"] + m["n_val"] == N_TEXTS and m["n_val"] == round(0.2 * N_TEXTS)
    assert m["val_perplexity_after"] < 0.8 * m["val_perplexity_before"], m
    assert m["val_perplexity_after"] == pytest.approx(math.exp(m["val_loss"]))
    assert 1 <= m["best_epoch"] <= m["epochs_run"] <= EPOCHS
    assert [r["epoch"] for r in m["history"]] == list(range(1, m["epochs_run"] + 1))
    assert trained.epochs_seen == [(e, EPOCHS) for e in range(1, m["epochs_run"] + 1)]
    assert m["train_seconds"] > 0
    # Inputs came from one extraction pass over the corpus, never a backbone forward per epoch.
    # (one forward per batch of the extraction's padding-aware plan)
    lengths = smollm2.tokenize(trained.corpus).lengths
    assert trained.extraction_forwards == len(plan_batches(lengths, 32))
    assert trained.extraction_forwards < EPOCHS * math.ceil(N_TEXTS / 32)
    assert not any(p.requires_grad for p in trained.head.module.parameters())
    print(f"\nlm head on {N_TEXTS} tweets: held-out perplexity {m['val_perplexity_before']:.1f}"
          f" -> {m['val_perplexity_after']:.1f} in {m['epochs_run']} epochs, "
          f"{m['train_seconds']:.1f} s")  # fmt: skip


@pytest.mark.slow
def test_saved_head_round_trips_and_refuses_another_backbone(
    smollm2: Backbone, trained: Trained, backbone: Backbone, tmp_path: Path
) -> None:
    head = trained.head
    folder = save_head(head, tmp_path / "lm-head")
    loaded = load_head(folder, smollm2)
    assert loaded.meta == head.meta
    x, mask = _stored(smollm2, trained, [N_TEXTS - 2, N_TEXTS - 1])
    torch.testing.assert_close(loaded.logits(x, mask), head.logits(x, mask), rtol=0, atol=0)
    with pytest.raises(InvalidInputError, match="language-model head.*generate"):
        loaded.predict(x, mask)
    with pytest.raises(FingerprintMismatchError, match="Retrain"):
        load_head(folder, backbone)  # MiniLM
    with pytest.raises(FingerprintMismatchError, match=head.head_id):
        generate(backbone, head, "The flight was", max_new_tokens=2)
    with pytest.raises(InvalidInputError, match="kind='blocks'"):
        HeadSpec(kind="linear", task="lm").resolved(smollm2)


@pytest.mark.slow
def test_generate_is_deterministic_and_bounded(smollm2: Backbone, trained: Trained) -> None:
    head = trained.head
    first = generate(smollm2, head, "@united my flight", max_new_tokens=5)
    assert isinstance(first, str) and first.strip()
    assert generate(smollm2, head, "@united my flight", max_new_tokens=5) == first
    sampled = [
        generate(smollm2, head, "@united my flight", max_new_tokens=2, temperature=1.0, seed=3)
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1] and isinstance(sampled[0], str)
    n_prompt = int(smollm2.tokenize(["@united my flight"]).lengths[0])
    with pytest.raises(InvalidInputError, match=f"at most {20 - n_prompt} new tokens"):
        generate(smollm2, head, "@united my flight", max_new_tokens=21 - n_prompt)
    with pytest.raises(InvalidInputError, match="longer than the backbone's max_length of 20"):
        generate(smollm2, head, "word " * 30, max_new_tokens=1)
