"""Language-model heads: a tenant's copy of the last blocks, fine-tuned on its plain-text corpus.

An ``lm`` head is a :class:`~audit.tenants.heads.BlocksHead` built with ``task="lm"``: the last
``k`` blocks and the final norm, copied from a decoder backbone and trained with next-token loss,
ending in the backbone's own (shared, frozen) unembedding. Untrained, it reproduces the backbone.

- :func:`train_lm_head` fine-tunes one from the store's activations entering block
  ``n_layers - k`` (the frozen prefix runs once per corpus, never per epoch) and records held-out
  perplexity before and after;
- :func:`perplexity` scores texts under a head, or under the backbone itself;
- :func:`generate` continues a prompt with a head (or the backbone), greedy or seeded sampling.

Targets are each text's token ids shifted by one, plus the end-of-sequence token after the last
token of every text that was not cut at ``max_length``: the head learns where the tenant's texts
end, which is what lets :func:`generate` stop.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from audit.tenants.heads import BlocksHead, Head, HeadMeta, HeadSpec, is_decoder
from probes.backbone import Backbone, RaggedTokens
from probes.datasets import validate_texts
from probes.errors import CorruptArtifactError, FingerprintMismatchError, InvalidInputError
from probes.hooks import resid_post
from probes.store import ActivationStore

logger = logging.getLogger(__name__)

MAX_NEW_TOKENS = 256  # no KV cache: every step runs the whole context again
IGNORE = -100  # target of a position with nothing to predict (padding, a cut text's last token)
_UNEMBED_CHUNK = 1024  # positions per unembedding call: bounds the [positions, vocab] logits
_EVAL_BATCH = 16  # texts per forward when scoring or evaluating


@dataclass(frozen=True)
class _LmPath:
    """How to get next-token logits from the activations at ``input_hook``."""

    input_hook: str
    hidden: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # acts, mask -> normed [b,pos,d]
    unembed: nn.Module


def _head_path(backbone: Backbone, head: Head | None) -> _LmPath:
    """Return the logits path of an ``lm`` head, or of the backbone itself when ``head`` is None."""
    if head is None:
        if not is_decoder(backbone):
            raise InvalidInputError(
                f"{backbone.name} ({backbone.architecture}) is not a causal language model; "
                "perplexity and generation need a decoder backbone such as smollm2."
            )
        last = backbone.n_layers - 1
        runner = backbone.tail(last)
        norm, hook = runner.final_norm, resid_post(last)
        return _LmPath(
            resid_post(last - 1), lambda a, m: norm(runner(a, m, [hook])[hook]), runner.unembed
        )
    if head.meta.task != "lm" or not isinstance(head.module, BlocksHead):
        raise InvalidInputError(
            f"Head {head.head_id} is a {head.kind} {head.meta.task} head; perplexity and "
            "generation need a head trained with task='lm'."
        )
    if head.meta.backbone_fingerprint != backbone.fingerprint:
        raise FingerprintMismatchError(
            f"Head {head.head_id} was trained on backbone {head.meta.backbone_name} "
            f"({head.meta.backbone_fingerprint[:12]}), not on {backbone.name} "
            f"({backbone.fingerprint[:12]}). Use that backbone, or retrain the head on this one."
        )
    module = head.module
    return _LmPath(
        head.input_hook, lambda a, m: _normed_hidden(module, a, m), module.runner.unembed
    )


def _normed_hidden(module: BlocksHead, acts: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Return the head's final-normed residual stream [b, pos, d] (the unembedding's input)."""
    if module.final_norm is None:
        raise InvalidInputError("This blocks head ends in a classifier, not in an unembedding.")
    out = module.runner(acts, mask, [module.last_hook])[module.last_hook]
    return module.final_norm(out)


def _targets(
    ids: Sequence[torch.Tensor], truncated: np.ndarray, width: int, eos_id: int | None
) -> torch.Tensor:
    """Return next-token targets [b, width]: ids shifted by one, EOS after whole texts."""
    out = torch.full((len(ids), width), IGNORE, dtype=torch.long)
    for j, row in enumerate(ids):
        n = len(row)
        out[j, : n - 1] = row[1:]
        if eos_id is not None and not truncated[j]:
            out[j, n - 1] = eos_id
    return out


def _nll_sum(hidden: torch.Tensor, targets: torch.Tensor, unembed: nn.Module) -> torch.Tensor:
    """Return the summed next-token NLL over positions with a target (no gradient kept)."""
    targets = targets.to(hidden.device)
    keep = targets != IGNORE
    h, y = hidden[keep], targets[keep]
    total = torch.zeros((), dtype=torch.float64, device=hidden.device)
    for start in range(0, len(y), _UNEMBED_CHUNK):
        logits = unembed(h[start : start + _UNEMBED_CHUNK]).float()
        total += nn.functional.cross_entropy(
            logits, y[start : start + _UNEMBED_CHUNK], reduction="sum"
        ).double()
    return total


# ---------------------------------------------------------------------------- training
@dataclass(frozen=True)
class _Corpus:
    """Stored activations entering the head, with each text's token ids and truncation flag."""

    tokens: RaggedTokens
    ids: list[torch.Tensor]
    truncated: np.ndarray
    eos_id: int | None

    def batch(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        acts, mask = self.tokens.padded(rows.tolist())
        ids = [self.ids[int(i)] for i in rows]
        return acts, mask, _targets(ids, self.truncated[rows], mask.shape[1], self.eos_id)


def _split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    n_val = max(int(round(n * val_fraction)), 1)
    if n - n_val < 1:
        raise InvalidInputError(
            f"The corpus has {n} text(s): too few to hold out a validation split. "
            "Give at least 2 texts (a few dozen for a useful head)."
        )
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _evaluate(module: BlocksHead, corpus: _Corpus, rows: np.ndarray) -> float:
    """Return the mean next-token loss (nats per token) of ``module`` on ``rows``."""
    module.eval()
    total, n_tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(rows), _EVAL_BATCH):
            acts, mask, targets = corpus.batch(rows[start : start + _EVAL_BATCH])
            hidden = _normed_hidden(module, acts, mask)
            total += float(_nll_sum(hidden, targets, module.runner.unembed))
            n_tokens += int((targets != IGNORE).sum())
    return total / max(n_tokens, 1)


def _train_step(
    module: BlocksHead, corpus: _Corpus, rows: np.ndarray, optimiser: torch.optim.Optimizer
) -> tuple[float, int]:
    """Run one optimiser step on ``rows``; return (summed loss, tokens)."""
    acts, mask, targets = corpus.batch(rows)
    keep = targets != IGNORE
    n_tokens = int(keep.sum())
    if n_tokens == 0:
        return 0.0, 0
    hidden = _normed_hidden(module, acts, mask)
    keep, targets = keep.to(hidden.device), targets.to(hidden.device)
    hidden, y = hidden[keep], targets[keep]
    # The [tokens, vocab] logits are the big tensor: unembed in chunks on a detached copy, each
    # chunk freed after its backward, then send the accumulated gradient through the blocks once.
    leaf = hidden.detach().requires_grad_(True)
    total = 0.0
    for start in range(0, n_tokens, _UNEMBED_CHUNK):
        logits = module.runner.unembed(leaf[start : start + _UNEMBED_CHUNK]).float()
        loss = nn.functional.cross_entropy(
            logits, y[start : start + _UNEMBED_CHUNK], reduction="sum"
        )
        (loss / n_tokens).backward()
        total += float(loss.detach())
    optimiser.zero_grad()
    hidden.backward(leaf.grad)
    optimiser.step()
    return total, n_tokens


def train_lm_head(
    backbone: Backbone,
    store: ActivationStore,
    texts: Sequence[str],
    spec: HeadSpec,
    *,
    tenant_id: str,
    head_id: str,
    corpus_id: str | None = None,
    progress: bool = True,
    on_epoch: Callable[[int, int, dict[str, float]], Any] | None = None,
) -> Head:
    """Return an ``lm`` head fine-tuned on ``texts`` with next-token loss.

    A seeded split holds out ``spec.val_fraction`` of the texts; training stops after
    ``spec.patience`` epochs without a lower validation loss and keeps the best epoch's weights
    (epoch 0, the untrained copy, if no epoch beats it). ``head.meta.metrics`` records the
    held-out perplexity before (the untrained copy, i.e. the backbone) and after, per-epoch
    history, sizes and timing. ``on_epoch(epoch, n_epochs, record)`` is called after each epoch.
    """
    started = time.perf_counter()
    # Refuses encoders and kinds other than blocks with a message that says what to use.
    spec = replace(spec, task="lm").resolved(backbone)
    texts = validate_texts(texts)
    train, val = _split(len(texts), spec.val_fraction, spec.seed)
    first = backbone.n_layers - spec.k
    hook = resid_post(first - 1)
    extraction = store.get(
        backbone, texts, [hook], ("tokens",), progress=progress, dataset_name=corpus_id
    )
    tokens = extraction.tokens[hook]
    batch = backbone.tokenize(texts)
    ids = [batch.input_ids[i, : int(n)] for i, n in enumerate(batch.lengths)]
    if not np.array_equal(np.diff(tokens.offsets), batch.lengths):
        raise CorruptArtifactError(
            "The stored activations do not match this backbone's tokenisation of the corpus "
            f"(hook {hook}). Prune the store's shards for {backbone.name} and train again."
        )
    corpus = _Corpus(tokens, ids, batch.truncated, backbone.tokenizer.eos_token_id)
    extract_seconds = time.perf_counter() - started

    torch.manual_seed(spec.seed)
    module = BlocksHead(backbone, spec.k, 0, spec.pooling, "lm")  # a copy: the backbone, untrained
    meta = HeadMeta(
        head_id=head_id,
        tenant_id=tenant_id,
        kind="blocks",
        task="lm",
        input_hook=hook,
        layer=backbone.n_layers - 1,
        k=spec.k,
        pooling=spec.pooling,
        d_model=backbone.d_model,
        n_outputs=int(module.runner.unembed.weight.shape[0]),  # the vocabulary
        backbone_name=backbone.name,
        backbone_fingerprint=backbone.fingerprint,
        corpus_id=corpus_id,
        spec=dict(spec.__dict__),
    )

    loss_before = _evaluate(module, corpus, val)
    best_loss, best_epoch = loss_before, 0
    best_state = copy.deepcopy(module.state_dict())
    params = [p for p in module.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=spec.lr or 1e-4, weight_decay=spec.weight_decay)
    rng = np.random.default_rng(spec.seed)
    history: list[dict[str, float]] = []
    bar = tqdm(
        range(1, spec.epochs + 1), desc="training lm head", disable=not progress, leave=False
    )
    for epoch in bar:
        module.train()
        total, n_tokens = 0.0, 0
        order = rng.permutation(train)
        for start in range(0, len(order), spec.batch_size):
            loss_sum, n = _train_step(
                module, corpus, order[start : start + spec.batch_size], optimiser
            )
            total, n_tokens = total + loss_sum, n_tokens + n
        val_loss = _evaluate(module, corpus, val)
        record = {
            "epoch": epoch,
            "train_loss": total / max(n_tokens, 1),
            "val_loss": val_loss,
            "val_perplexity": _ppl(val_loss),
        }
        history.append(record)
        bar.set_postfix(val_ppl=f"{record['val_perplexity']:.2f}")
        if on_epoch is not None:
            on_epoch(epoch, spec.epochs, record)
        if val_loss < best_loss - 1e-6:
            best_loss, best_epoch = val_loss, epoch
            best_state = copy.deepcopy(module.state_dict())
        elif epoch - best_epoch >= spec.patience:
            break
    module.load_state_dict(best_state)
    module.eval()
    for param in module.parameters():
        param.requires_grad_(False)
    meta.metrics = {
        "val_loss": best_loss,
        "val_loss_before": loss_before,
        "val_perplexity_before": _ppl(loss_before),
        "val_perplexity_after": _ppl(best_loss),
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "n_train": int(len(train)),
        "n_val": int(len(val)),
        "n_val_tokens": int(sum(len(ids[i]) - int(batch.truncated[i]) for i in val)),
        "n_truncated": int(batch.truncated.sum()),
        "extract_seconds": round(extract_seconds, 3),
        "train_seconds": round(time.perf_counter() - started, 3),
        "history": history,
    }
    logger.info(
        "lm head %s: held-out perplexity %.2f -> %.2f (best epoch %d of %d)",
        head_id, _ppl(loss_before), _ppl(best_loss), best_epoch, len(history),
    )  # fmt: skip
    return Head(meta, module)


def _ppl(loss: float) -> float:
    return float(math.exp(min(loss, 700.0)))  # exp overflows a float past ~709


# ------------------------------------------------------------------------- scoring
def perplexity(
    backbone: Backbone, head: Head | None, texts: Sequence[str], *, batch_size: int = _EVAL_BATCH
) -> float:
    """Return the perplexity of ``texts`` under ``head`` (None: under the backbone itself).

    Token-weighted over all texts: exp of the mean next-token loss, the end-of-sequence token
    after each text that fits in ``max_length`` included (as in training).
    """
    texts = validate_texts(texts)
    if not texts:
        raise InvalidInputError("perplexity() needs at least one text.")
    if batch_size < 1:
        raise InvalidInputError(f"batch_size must be a positive int. Got {batch_size} instead.")
    path = _head_path(backbone, head)
    eos_id = backbone.tokenizer.eos_token_id
    total, n_tokens = 0.0, 0
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        batch = backbone.tokenize(chunk)
        acts, mask = backbone.forward_padded(chunk, [path.input_hook])
        ids = [batch.input_ids[i, : int(n)] for i, n in enumerate(batch.lengths)]
        targets = _targets(ids, batch.truncated, mask.shape[1], eos_id)
        with torch.inference_mode():
            hidden = path.hidden(acts[path.input_hook], mask)
            total += float(_nll_sum(hidden, targets, path.unembed))
        n_tokens += int((targets != IGNORE).sum())
    return _ppl(total / max(n_tokens, 1))


# ----------------------------------------------------------------------- generating
def _check_generate_args(prompt: Any, max_new_tokens: Any, temperature: Any, seed: Any) -> None:
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidInputError(
            f"The 'prompt' parameter of generate must be a non-empty string. Got {prompt!r} "
            "instead: give the start of the text to continue."
        )
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
        raise InvalidInputError(
            f"The 'max_new_tokens' parameter of generate must be an int in [1, {MAX_NEW_TOKENS}]. "
            f"Got {max_new_tokens!r} instead."
        )
    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise InvalidInputError(
            f"The 'max_new_tokens' parameter of generate must be an int in [1, {MAX_NEW_TOKENS}]. "
            f"Got {max_new_tokens} instead. Generation reruns the whole context for each token; "
            "for longer texts call generate again with the output appended to the prompt."
        )
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not math.isfinite(temperature)
        or temperature < 0
    ):
        raise InvalidInputError(
            "The 'temperature' parameter of generate must be a finite number >= 0 (0 = greedy, "
            f"e.g. 0.7 to sample). Got {temperature!r} instead."
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidInputError(f"The 'seed' parameter of generate must be an int. Got {seed!r}.")


def generate(
    backbone: Backbone,
    head: Head | None,
    prompt: str,
    *,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    seed: int = 0,
) -> str:
    """Return the text ``head`` writes after ``prompt`` (None: the backbone's own continuation).

    Greedy when ``temperature`` is 0, else sampled from softmax(logits / temperature) with a
    generator seeded by ``seed`` (same arguments, same text). Each step runs the frozen prefix up
    to the head's input hook on prompt + text so far, then the head; it stops at the
    end-of-sequence token or after ``max_new_tokens`` (at most 256) tokens. The continuation is
    returned without the prompt.
    """
    _check_generate_args(prompt, max_new_tokens, temperature, seed)
    path = _head_path(backbone, head)
    tokenizer = backbone.tokenizer
    prompt_batch = backbone.tokenize([prompt])
    n_prompt = int(prompt_batch.lengths[0])
    if prompt_batch.truncated[0]:
        raise InvalidInputError(
            f"The prompt is longer than the backbone's max_length of {backbone.max_length} "
            "tokens. Shorten it (generation needs room for the new tokens too)."
        )
    if n_prompt + max_new_tokens > backbone.max_length:
        raise InvalidInputError(
            f"The prompt has {n_prompt} tokens; with max_new_tokens={max_new_tokens} the text "
            f"would pass the backbone's max_length of {backbone.max_length}. Shorten the prompt "
            f"or ask for at most {max(backbone.max_length - n_prompt, 0)} new tokens."
        )
    stop = {tokenizer.eos_token_id, *_config_eos(backbone)} - {None}
    generator = torch.Generator().manual_seed(seed)
    new_ids: list[int] = []
    for _ in range(max_new_tokens):
        text = prompt + tokenizer.decode(new_ids, skip_special_tokens=True)
        acts, mask = backbone.forward_padded([text], [path.input_hook])
        last = int(mask[0].sum()) - 1
        with torch.inference_mode():
            hidden = path.hidden(acts[path.input_hook], mask)
            logits = path.unembed(hidden[0, last]).float().cpu()
        if temperature == 0:
            token = int(logits.argmax())
        else:
            probs = torch.softmax(logits / temperature, dim=-1)
            token = int(torch.multinomial(probs, 1, generator=generator))
        if token in stop:
            break
        new_ids.append(token)
    return tokenizer.decode(new_ids, skip_special_tokens=True)


def _config_eos(backbone: Backbone) -> list[int]:
    eos = getattr(getattr(backbone.bridge.original_model, "config", None), "eos_token_id", None)
    if eos is None:
        return []
    return [int(e) for e in eos] if isinstance(eos, list | tuple) else [int(eos)]
