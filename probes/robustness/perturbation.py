"""Perturbation robustness: does the best-layer probe still work on typo'd, re-cased, diluted text?

The probe is the sweep's best-layer LogisticProbe, fitted on clean training activations. The
held-out texts are perturbed four ways and scored at the best hook only, with activations read
through the store (a second run costs no forward):

- ``typos``: each letter is edited with probability ``TYPO_RATE`` (0.05, about one letter in twenty):
  swapped with the next character, dropped, doubled by an inserted random letter, or replaced by
  a random letter, the edit chosen uniformly.
- ``uppercase``: the whole text upper-cased; ``random_case``: each letter's case flipped by a coin.
  (An uncased tokenizer such as MiniLM's lower-cases first, so these two change nothing there.)
- ``dilution``: a neutral sentence from ``DISTRACTORS`` before the text and another after it.

The headline is the largest AUROC drop from clean, with a paired bootstrap interval.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from probes.metrics import Estimate, bootstrap_auroc, bootstrap_auroc_difference
from probes.robustness.core import (
    CheckContext,
    CheckResult,
    Stopwatch,
    Threshold,
    require_samples,
)
from probes.robustness.random_backbone import best_probe

CHECK = "perturbation"
TITLE = "Perturbation robustness: largest AUROC drop"
MIN_TEST_PER_CLASS = 10  # fewer held-out rows per class give AUROC intervals too wide to judge
TYPO_RATE = 0.05
DISTRACTORS = (
    "The weather report said it would be cloudy on Tuesday.",
    "The train to the city leaves every hour from platform two.",
    "The library is open from nine in the morning until six.",
    "Water boils at a lower temperature at high altitude.",
    "The meeting was moved to the second floor conference room.",
    "Most maps show north at the top of the page.",
)

Perturb = Callable[[str, np.random.Generator], str]


def _typos(text: str, rng: np.random.Generator) -> str:
    chars = list(text)
    out: list[str] = []
    i = 0
    while i < len(chars):
        c = chars[i]
        if not c.isalpha() or rng.random() >= TYPO_RATE:
            out.append(c)
        else:
            edit = int(rng.integers(4))
            letter = string.ascii_lowercase[int(rng.integers(26))]
            if edit == 0 and i + 1 < len(chars):  # swap with the next character
                out += [chars[i + 1], c]
                i += 1
            elif edit == 1:  # drop
                pass
            elif edit == 2:  # insert a letter after it
                out += [c, letter]
            else:  # replace (or, at the end, where a swap has no partner)
                out.append(letter)
        i += 1
    return "".join(out)


def _random_case(text: str, rng: np.random.Generator) -> str:
    flips = rng.random(len(text)) < 0.5
    return "".join(c.swapcase() if f else c for c, f in zip(text, flips, strict=True))


def _dilution(text: str, rng: np.random.Generator) -> str:
    before, after = rng.choice(len(DISTRACTORS), size=2, replace=False)
    return f"{DISTRACTORS[before]} {text} {DISTRACTORS[after]}"


PERTURBATIONS: dict[str, Perturb] = {
    "typos": _typos,
    "uppercase": lambda text, _rng: text.upper(),
    "random_case": _random_case,
    "dilution": _dilution,
}


def perturb_texts(texts: Sequence[str], kind: str, seed: int = 0) -> list[str]:
    """Return ``texts`` perturbed by ``PERTURBATIONS[kind]``, deterministic for a given seed."""
    fn = PERTURBATIONS[kind]
    # One generator per kind, so adding a perturbation never changes another one's texts.
    rng = np.random.default_rng([seed, list(PERTURBATIONS).index(kind)])
    out = []
    for text in texts:
        perturbed = fn(text, rng)
        out.append(perturbed if perturbed.strip() else text)  # a one-letter text may vanish
    return out


def score_texts(ctx: CheckContext, probe: Any, texts: Sequence[str], name: str) -> np.ndarray:
    """Return ``probe``'s scores of ``texts`` at the best hook, activations read via the store."""
    hook = ctx.best_hook
    extraction = ctx.store.get(
        ctx.backbone,
        list(texts),
        [hook],
        (ctx.pooling,),
        batch_size=ctx.batch_size,
        progress=ctx.progress,
        dataset_name=name,
    )
    return np.asarray(probe.decision_function(extraction.pooled[(hook, ctx.pooling)]))


def _fraction_changed(before: Sequence[Any], after: Sequence[Any]) -> float:
    return float(np.mean([a != b for a, b in zip(before, after, strict=True)]))


def run(ctx: CheckContext, thresholds: dict[str, Threshold]) -> CheckResult:
    """Return the largest AUROC drop of the best-layer probe under the perturbations."""
    test = ctx.split.test
    labels = ctx.labels[test]
    n_have = int(min(np.sum(labels == 0), np.sum(labels == 1)))
    skipped = require_samples(
        CHECK, TITLE, n_have, MIN_TEST_PER_CLASS, "held-out examples of each class"
    )
    if skipped is not None:
        return skipped
    watch = Stopwatch()
    best = ctx.sweep.best("logistic")
    with watch.fit():
        probe = best_probe(ctx, ctx.sweep, ctx.features)
        clean = np.asarray(probe.decision_function(ctx.features[best.hook_name][test]))
        clean_auroc = bootstrap_auroc(clean, labels, n_boot=ctx.n_boot, seed=ctx.seed)
    held_out_texts = [ctx.dataset.texts[i] for i in test]
    clean_ids = ctx.backbone.tokenizer(held_out_texts)["input_ids"]
    per_kind: dict[str, dict] = {}
    drops: dict[str, Estimate] = {}
    for kind in PERTURBATIONS:
        texts = perturb_texts(held_out_texts, kind, seed=ctx.seed)
        with watch.forward():
            scores = score_texts(ctx, probe, texts, f"{ctx.dataset.name}+{kind}")
        with watch.fit():
            drops[kind] = bootstrap_auroc_difference(
                clean, scores, labels, n_boot=ctx.n_boot, seed=ctx.seed
            )
            per_kind[kind] = {
                "auroc": bootstrap_auroc(
                    scores, labels, n_boot=ctx.n_boot, seed=ctx.seed
                ).as_dict(),
                "drop": drops[kind].as_dict(),
                "texts_changed": _fraction_changed(held_out_texts, texts),
                # An uncased tokenizer makes case changes invisible: say so rather than guess.
                "tokens_changed": _fraction_changed(
                    clean_ids, ctx.backbone.tokenizer(texts)["input_ids"]
                ),
                "example": texts[0],
            }
    worst = max(drops, key=lambda k: drops[k].value)
    return CheckResult.judged(
        CHECK,
        TITLE,
        drops[worst],
        f"AUROC drop under {worst} (clean {clean_auroc.value:.3f}, layer {best.layer})",
        thresholds["perturbation_drop"],
        details={
            "layer": best.layer,
            "hook_name": best.hook_name,
            "clean_auroc": clean_auroc.as_dict(),
            "perturbations": per_kind,
            "worst": worst,
            "typo_rate": TYPO_RATE,
        },
        forward_seconds=watch.forward_seconds,
        fit_seconds=watch.fit_seconds,
    )
