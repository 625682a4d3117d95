"""Interventions at one layer: edit stored per-token activations, resume, score later probes.

Shared by the causal-use and erasure checks. The held-out texts' per-token activations at the
chosen layer come from the store (computed once); each edit is applied to them and the forward
resumes from that layer with ``Backbone.resume``, so blocks up to the layer never run again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from probes.backbone import RaggedTokens
from probes.estimators import LogisticProbe
from probes.hooks import parse_resid, resid_post
from probes.metrics import Estimate, auroc
from probes.pooling import TOKENS, pool
from probes.robustness.core import CheckContext, CheckResult, Stopwatch, require_samples

Edit = Callable[[torch.Tensor], torch.Tensor]  # [batch, pos, d_model] -> [batch, pos, d_model]
CLEAN = "clean"  # the identity edit: the baseline every other edit is compared with


@dataclass(frozen=True)
class InterventionLayer:
    """The layer to intervene at, its probe's held-out AUROC, and the later hooks to score."""

    layer: int
    hook_name: str
    auroc: Estimate
    downstream: list[str]
    note: str


def identity(acts: torch.Tensor) -> torch.Tensor:
    """Return ``acts`` unchanged (the clean baseline, resumed through the same path)."""
    return acts


def project_out(direction: np.ndarray) -> Edit:
    """Return an edit removing each token's component along ``direction`` (unit norm, or zero).

    A zero vector gives back the activations bit for bit, which tests use to show the resume
    path itself changes nothing.
    """
    u = torch.as_tensor(np.asarray(direction, dtype=np.float32))

    def edit(acts: torch.Tensor) -> torch.Tensor:
        return acts - (acts @ u).unsqueeze(-1) * u

    return edit


def add_direction(direction: np.ndarray, alpha: float) -> Edit:
    """Return an edit adding ``alpha * direction`` to every token (steering)."""
    shift = torch.as_tensor(np.asarray(direction, dtype=np.float32) * np.float32(alpha))
    return lambda acts: acts + shift


def smallest_class_count(ctx: CheckContext) -> int:
    """Return the smallest number of examples of one class in either split."""
    splits = (ctx.split.train, ctx.split.test)
    return min(int(np.sum(ctx.labels[rows] == k)) for rows in splits for k in (0, 1))


def choose_layer(ctx: CheckContext) -> InterventionLayer | None:
    """Return the layer to intervene at (the best one with a later layer to score), or None."""
    last = ctx.backbone.n_layers - 1
    scores = {}
    for score in ctx.sweep.scores:
        parsed = parse_resid(score.hook_name)
        if score.probe == "logistic" and parsed is not None and parsed.post:
            scores[parsed.layer] = score
    later = {
        layer: [resid_post(m) for m in range(layer + 1, last + 1) if resid_post(m) in ctx.features]
        for layer in scores
        if layer < last and resid_post(layer) in ctx.features
    }
    candidates = [layer for layer, hooks in later.items() if hooks]
    if not candidates:
        return None
    best = ctx.best_layer
    if best in candidates:
        note = f"layer {best} is the best layer of the sweep"
    else:
        # Nothing is downstream of the last layer: take the best layer that has a later one.
        chosen = max(candidates, key=lambda m: (round(scores[m].auroc.value, 6), -m))
        note = (
            f"the best layer ({best}) has no later layer to score; layer {chosen} is the best "
            f"of layers 0-{last - 1}"
        )
        best = chosen
    return InterventionLayer(best, resid_post(best), scores[best].auroc, later[best], note)


def layer_probes(
    ctx: CheckContext, hook_names: Sequence[str], watch: Stopwatch
) -> dict[str, LogisticProbe]:
    """Return a LogisticProbe per hook, fitted on the training split's clean pooled features.

    The sweep already fitted exactly these (same split, same labels); they are reused, and a
    probe is only fitted where the sweep has none.
    """
    train = ctx.split.train
    probes: dict[str, LogisticProbe] = {}
    for hook in hook_names:
        fitted = ctx.sweep.fitted.get(("logistic", hook))
        if isinstance(fitted, LogisticProbe):
            probes[hook] = fitted
            continue
        with watch.fit():
            probe = LogisticProbe(random_state=ctx.seed)
            probes[hook] = probe.fit(ctx.features[hook][train], ctx.labels[train])
    return probes


def held_out_tokens(ctx: CheckContext, hook_name: str, watch: Stopwatch) -> RaggedTokens:
    """Return the held-out texts' per-token activations at ``hook_name``, from the store."""
    texts = [ctx.dataset.texts[i] for i in ctx.split.test]
    with watch.forward():  # a forward only the first time; afterwards the shard is read
        stored = ctx.store.get(
            ctx.backbone,
            texts,
            [hook_name],
            (TOKENS,),
            batch_size=ctx.batch_size,
            progress=ctx.progress,
            dataset_name=ctx.dataset.name,
        )
    return stored.tokens[hook_name]


def resume_pooled(
    ctx: CheckContext,
    layer: int,
    tokens: RaggedTokens,
    edits: Mapping[str, Edit],
    hook_names: Sequence[str],
    watch: Stopwatch,
    desc: str = "intervening",
) -> dict[str, dict[str, np.ndarray]]:
    """Return pooled later-layer activations per edit and hook, [n_texts, d_model] each.

    Rows keep the order of ``tokens``; batches are formed by length so padding stays small.
    Padding positions are edited too, harmlessly: attention and pooling both mask them.
    """
    n, d_model = len(tokens), tokens.values.shape[1]
    order = np.argsort(-np.diff(tokens.offsets), kind="stable")
    out = {name: {h: np.zeros((n, d_model), np.float32) for h in hook_names} for name in edits}
    bar = tqdm(total=n * len(edits), desc=desc, unit="text", disable=not ctx.progress, leave=False)
    with watch.forward(), bar:
        for start in range(0, n, ctx.batch_size):
            rows = order[start : start + ctx.batch_size]
            acts, mask = tokens.padded(rows.tolist())
            for name, edit in edits.items():
                resumed = ctx.backbone.resume(layer, edit(acts), mask, hook_names)
                for hook in hook_names:
                    pooled = pool(resumed[hook], mask.to(resumed[hook].device), ctx.pooling)
                    out[name][hook][rows] = pooled.float().cpu().numpy()
                bar.update(len(rows))
    return out


def score_pooled(
    probes: Mapping[str, LogisticProbe], pooled: Mapping[str, Mapping[str, np.ndarray]]
) -> dict[str, dict[str, np.ndarray]]:
    """Return each probe's decision scores on each edit's pooled activations."""
    return {
        name: {hook: probes[hook].decision_function(x) for hook, x in by_hook.items()}
        for name, by_hook in pooled.items()
    }


def downstream_effects(
    clean: Mapping[str, np.ndarray], edited: Mapping[str, np.ndarray], labels: np.ndarray
) -> list[dict[str, Any]]:
    """Return, per later hook, the AUROC before and after an edit, its drop and mean score shift."""
    rows: list[dict[str, Any]] = []
    for hook, scores in clean.items():
        before, after = auroc(scores, labels), auroc(edited[hook], labels)
        parsed = parse_resid(hook)
        rows.append(
            {
                "layer": -1 if parsed is None else parsed.layer,
                "hook_name": hook,
                "auroc_clean": before,
                "auroc_edited": after,
                "auroc_drop": before - after,
                # In the later probe's logit units; positive = pushed towards the positive class.
                "mean_score_shift": float(np.mean(edited[hook] - scores)),
                # Shifts of both signs cancel in the mean; this one says how much scores moved.
                "mean_abs_score_change": float(np.mean(np.abs(edited[hook] - scores))),
            }
        )
    return rows


def intervention_layer_or_skip(
    ctx: CheckContext, check: str, title: str, min_per_class: int
) -> InterventionLayer | CheckResult:
    """Return the layer to intervene at, or a skipped result saying what is missing."""
    skipped = require_samples(
        check,
        title,
        smallest_class_count(ctx),
        min_per_class,
        "examples of each class in both the training and the held-out split",
    )
    if skipped is not None:
        return skipped
    choice = choose_layer(ctx)
    if choice is None:
        return CheckResult.skipped(
            check,
            title,
            "needs the stored features of a layer and of at least one later layer; "
            "the sweep covers none before the last layer.",
        )
    return choice
