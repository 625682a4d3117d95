"""Online-code minimum description length (Voita & Titov 2020) of the labels given the activations.

The training split is shuffled (seeded) and cut at growing fractions of its size. The first block
is sent with the uniform code (1 bit per binary label); every later block is sent with the
probabilities of a probe fitted on everything before it. Compression is the uniform codelength
over this online codelength: a concept the layer makes easy to learn compresses well above 1,
while the same labels shuffled (the control) compress to about 1 or below. Probes are fitted at
the fixed C the sweep chose at the best layer, because cross-validating each block is the cost.
"""

from __future__ import annotations

import math

import numpy as np

from probes.metrics import Estimate
from probes.robustness.core import (
    CheckContext,
    CheckResult,
    Stopwatch,
    Threshold,
    require_samples,
)
from probes.robustness.selectivity import fixed_c_probe, sweep_c

CHECK = "mdl"
TITLE = "Compression: online-code MDL"
FRACTIONS = (0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.0625, 0.125, 0.25, 0.5, 1.0)
MIN_FIRST_BLOCK = 10  # smaller first blocks would fit probes on a handful of examples
MIN_SAMPLES = 40  # training examples: at least a few blocks after the first


def block_ends(n: int, fractions: tuple[float, ...] = FRACTIONS) -> list[int]:
    """Return the increasing block boundaries (prefix sizes) of ``n`` examples, ending at ``n``."""
    ends = {min(n, max(MIN_FIRST_BLOCK, math.ceil(f * n))) for f in fractions}
    return sorted(ends | {n})


def online_codelength(
    X: np.ndarray, labels: np.ndarray, ends: list[int], C: float
) -> tuple[float, list[float]]:
    """Return the online codelength in bits of binary ``labels`` and the bits of each block.

    Rows are sent in the given order; a prefix holding one class only cannot fit a probe, so the
    next block falls back to the uniform code (still a valid code a receiver can decode).
    """
    bits = [float(ends[0])]  # the first block, uniform code: 1 bit per binary label
    for start, end in zip(ends[:-1], ends[1:], strict=True):
        if len(np.unique(labels[:start])) < 2:
            bits.append(float(end - start))
            continue
        probe = fixed_c_probe(C).fit(X[:start], labels[:start])
        margin = probe.decision_function(X[start:end]) * (2 * labels[start:end] - 1)
        # -log2 p(label | x) = softplus(-margin) / ln 2, computed without overflow
        bits.append(float(np.logaddexp(0.0, -margin).sum() / math.log(2)))
    return float(sum(bits)), bits


def run(ctx: CheckContext, thresholds: dict[str, Threshold]) -> CheckResult:
    """Return the real labels' online-code compression at the best layer, judged."""
    labels = np.asarray(ctx.labels).astype(int)
    train = np.asarray(ctx.split.train)
    skip = require_samples(CHECK, TITLE, len(train), MIN_SAMPLES, "training examples")
    if skip is not None:
        return skip
    rng = np.random.default_rng(ctx.seed)
    order = rng.permutation(train)
    X = np.asarray(ctx.features[ctx.best_hook], dtype=np.float64)[order]
    real = labels[order]
    control = rng.permutation(real)
    ends = block_ends(len(order))
    C = sweep_c(ctx, ctx.best_hook)
    watch = Stopwatch()
    with watch.fit():
        real_bits, real_blocks = online_codelength(X, real, ends, C)
        control_bits, control_blocks = online_codelength(X, control, ends, C)
    uniform = float(len(order))  # 1 bit per binary label
    compression = uniform / real_bits
    control_compression = uniform / control_bits
    blocks = [
        {"start": start, "end": end, "real_bits": r, "control_bits": c}
        for start, end, r, c in zip([0, *ends[:-1]], ends, real_blocks, control_blocks, strict=True)
    ]
    return CheckResult.judged(
        CHECK,
        TITLE,
        Estimate(compression, compression, compression),
        f"uniform / online codelength at layer {ctx.best_layer}",
        thresholds["mdl_compression"],
        reason=(
            f"real labels {real_bits:.0f} bits (compression {compression:.2f}); shuffled control "
            f"labels {control_bits:.0f} bits ({control_compression:.2f}); uniform {uniform:.0f} bits"
        ),
        details={
            "hook_name": ctx.best_hook,
            "layer": ctx.best_layer,
            "n_samples": len(order),
            "C": C,
            "uniform_bits": uniform,
            "real_bits": real_bits,
            "control_bits": control_bits,
            "compression": compression,
            "control_compression": control_compression,
            "blocks": blocks,
        },
        fit_seconds=watch.fit_seconds,
    )
