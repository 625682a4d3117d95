"""Causal use: does removing (or adding) the probe direction at layer L change later layers?

A probe that decodes a concept at layer L shows it is *present*; it is *used* only if the later
layers' reading of the concept depends on that direction. This check projects the direction out
of every held-out token at L (and, separately, adds it at a few scales), resumes the forward from
L and scores the later layers' probes of the same concept. The headline is the largest AUROC drop
downstream under projection, with a paired-bootstrap interval; a random direction of the same
norm is the control.
"""

from __future__ import annotations

import numpy as np

from probes.metrics import bootstrap_auroc_difference
from probes.robustness.core import (
    CheckContext,
    CheckResult,
    Stopwatch,
    Threshold,
)
from probes.robustness.intervene import (
    CLEAN,
    Edit,
    add_direction,
    downstream_effects,
    held_out_tokens,
    identity,
    intervention_layer_or_skip,
    layer_probes,
    project_out,
    resume_pooled,
    score_pooled,
)

CHECK = "causal"
TITLE = "Causal use: projecting the direction out at layer L changes later probes"
MIN_PER_CLASS = 20  # per split: below it a held-out AUROC drop is mostly noise
# Steering scales, in standard deviations of the held-out tokens' projection on the direction:
# one each way shows the sign and size of the effect; each scale costs one resumed forward.
STEER_SCALES = (-3.0, 3.0)


def run(ctx: CheckContext, thresholds: dict[str, Threshold]) -> CheckResult:
    """Return the causal-use result: the largest downstream AUROC drop under projection at L."""
    watch = Stopwatch()
    choice = intervention_layer_or_skip(ctx, CHECK, TITLE, MIN_PER_CLASS)
    if isinstance(choice, CheckResult):
        return choice
    layer = choice.layer
    probes = layer_probes(ctx, [choice.hook_name, *choice.downstream], watch)
    direction = probes[choice.hook_name].direction_
    # The control: a random direction of the same (unit) norm, seeded for reproducibility.
    rng = np.random.default_rng(ctx.seed)
    random_direction = rng.standard_normal(len(direction))
    random_direction /= np.linalg.norm(random_direction)

    tokens = held_out_tokens(ctx, choice.hook_name, watch)
    spread = float(np.std(tokens.values @ direction))
    edits: dict[str, Edit] = {
        CLEAN: identity,
        "project": project_out(direction),
        "project_random": project_out(random_direction),
    }
    for scale in STEER_SCALES:
        edits[f"add_{scale:+g}sd"] = add_direction(direction, scale * spread)
    pooled = resume_pooled(
        ctx, layer, tokens, edits, choice.downstream, watch, desc=f"{CHECK} at layer {layer}"
    )

    labels = ctx.labels[ctx.split.test]
    with watch.fit():
        scores = score_pooled(probes, pooled)
        effects = {
            name: downstream_effects(scores[CLEAN], scores[name], labels)
            for name in edits
            if name != CLEAN
        }
        projected = effects["project"]
        # The interval is that of the layer with the largest point drop: bootstrapping the
        # maximum over layers instead would bias it upwards.
        worst = max(projected, key=lambda row: float(row["auroc_drop"]))
        hook = str(worst["hook_name"])
        figure = bootstrap_auroc_difference(
            scores[CLEAN][hook], scores["project"][hook], labels, n_boot=ctx.n_boot, seed=ctx.seed
        )
        control = bootstrap_auroc_difference(
            scores[CLEAN][hook],
            scores["project_random"][hook],
            labels,
            n_boot=ctx.n_boot,
            seed=ctx.seed,
        )
    random_max = max(float(row["auroc_drop"]) for row in effects["project_random"])
    presence, bar = thresholds["presence_auroc"], thresholds["causal_effect"]
    present = presence.passes(choice.auroc.value)
    details = {
        "layer": layer,
        "hook_name": choice.hook_name,
        "layer_note": choice.note,
        "auroc_at_layer": choice.auroc.as_dict(),
        "present_at_layer": present,
        "headline_hook": hook,
        "n_test": len(labels),
        "projection_sd": spread,
        "projected": projected,
        "random_direction": {
            "auroc_drop_at_headline_hook": control.as_dict(),
            "largest_auroc_drop": random_max,
            "per_layer": effects["project_random"],
        },
        "steering": {
            f"{scale:+g}": {"alpha": scale * spread, "per_layer": effects[f"add_{scale:+g}sd"]}
            for scale in STEER_SCALES
        },
        "pooling": ctx.pooling,
    }
    result = CheckResult.judged(
        CHECK,
        TITLE,
        figure,
        f"largest downstream AUROC drop, direction projected out at layer {layer}",
        bar,
        details=details,
        forward_seconds=watch.forward_seconds,
        fit_seconds=watch.fit_seconds,
    )
    if result.verdict == "fail":
        if present:
            result.reason = (
                f"present at layer {layer} but unused downstream: projecting its direction out "
                f"lowers later probes' AUROC by at most {figure} (below {bar.value}; random "
                f"direction: {random_max:.3f})"
            )
        else:
            result.reason = (
                f"absent at layer {layer} (AUROC {choice.auroc.value:.3f} < {presence.value}), "
                "so there is no direction there for later layers to use"
            )
    return result
