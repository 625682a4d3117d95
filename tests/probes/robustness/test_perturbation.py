"""Perturbation robustness: typos, case changes and dilution, scored through the store."""

from __future__ import annotations

import math

import numpy as np

from probes import bootstrap_auroc
from probes.robustness import THRESHOLDS, CheckContext
from probes.robustness import perturbation as check
from probes.robustness.random_backbone import best_probe

TEXTS = [
    "A gorgeous, witty and deeply felt film about growing up.",
    "The plot is thin and the jokes land with a dull thud.",
    "I",
]


def test_figures_are_finite_and_a_second_run_needs_no_forward(
    real_context: CheckContext,
) -> None:
    result = check.run(real_context, THRESHOLDS)
    assert result.verdict in ("pass", "fail")
    assert result.figure is not None
    assert all(math.isfinite(v) for v in (result.figure.value, result.figure.low))
    per_kind = result.details["perturbations"]
    assert set(per_kind) == {"typos", "uppercase", "random_case", "dilution"}
    for kind, row in per_kind.items():
        assert all(math.isfinite(row["auroc"][k]) for k in ("value", "low", "high")), kind
        assert row["drop"]["low"] <= row["drop"]["value"] <= row["drop"]["high"], kind
    worst = result.details["worst"]
    assert result.figure.value == max(row["drop"]["value"] for row in per_kind.values())
    assert per_kind[worst]["drop"]["value"] == result.figure.value
    # MiniLM's tokenizer is uncased: case changes reach it as the same tokens, so no drop.
    assert per_kind["uppercase"]["tokens_changed"] == 0.0
    assert per_kind["uppercase"]["drop"]["value"] == 0.0
    assert per_kind["typos"]["tokens_changed"] > 0.9
    passes = real_context.backbone.n_forward_passes
    again = check.run(real_context, THRESHOLDS)
    assert real_context.backbone.n_forward_passes == passes  # every perturbed text was stored
    assert again.as_dict()["figure"] == result.as_dict()["figure"]


def test_dilution_changes_the_texts_and_the_activations(real_context: CheckContext) -> None:
    texts = [real_context.dataset.texts[i] for i in real_context.split.test[:8]]
    diluted = check.perturb_texts(texts, "dilution", seed=0)
    hook = real_context.best_hook
    for before, after in zip(texts, diluted, strict=True):
        assert before in after and after != before
        assert after.startswith(check.DISTRACTORS) and after.endswith(check.DISTRACTORS)
    clean = real_context.store.get(real_context.backbone, texts, [hook], progress=False)
    moved = real_context.store.get(real_context.backbone, diluted, [hook], progress=False)
    a, b = clean.pooled[(hook, "mean")], moved.pooled[(hook, "mean")]
    assert np.linalg.norm(a - b, axis=1).min() > 0.1 * np.linalg.norm(a, axis=1).min()


def test_destructive_perturbation_scores_at_chance(real_context: CheckContext) -> None:
    probe = best_probe(real_context, real_context.sweep, real_context.features)
    test = real_context.split.test
    same = ["This sentence replaces every held-out text."] * len(test)
    scores = check.score_texts(real_context, probe, same, "constant")
    # Identical texts get identical scores up to float noise between batches of other sizes.
    assert np.ptp(scores) < 1e-9
    tied = np.round(scores, 9)
    assert bootstrap_auroc(tied, real_context.labels[test], n_boot=50).value == 0.5
    # The same helper on the real texts scores what the sweep measured.
    real = check.score_texts(
        real_context, probe, [real_context.dataset.texts[i] for i in test], "clean"
    )
    clean = probe.decision_function(real_context.features[real_context.best_hook][test])
    np.testing.assert_allclose(real, clean, rtol=1e-4, atol=1e-4)


def test_perturbations_are_seeded_and_keep_what_they_promise() -> None:
    typos = check.perturb_texts(TEXTS, "typos", seed=0)
    assert typos == check.perturb_texts(TEXTS, "typos", seed=0)
    assert typos != check.perturb_texts(TEXTS, "typos", seed=1)
    assert typos[0] != TEXTS[0] and all(t.strip() for t in typos)
    for kind in ("uppercase", "random_case"):
        changed = check.perturb_texts(TEXTS, kind, seed=0)
        assert [t.lower() for t in changed] == [t.lower() for t in TEXTS]
        assert changed[:2] != TEXTS[:2]
    assert check.perturb_texts(TEXTS, "uppercase")[1] == TEXTS[1].upper()
