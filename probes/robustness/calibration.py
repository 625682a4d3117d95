"""Calibration: expected calibration error (ECE) of the best layer's probe on held-out rows.

The probe's positive-class probability is binned in equal-width bins; ECE is the count-weighted
mean gap between each bin's mean predicted probability and its observed frequency of positives
(the reliability diagram, also returned). The sweep's fitted probe is scored, not a refit one,
because it is the probe the audit saves and reuses. ECE is biased upwards on small samples (every
bin's gap is an absolute value), so its bootstrap interval sits mostly above the point estimate.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from probes.estimators import LogisticProbe
from probes.metrics import Estimate
from probes.robustness.core import (
    CheckContext,
    CheckResult,
    Stopwatch,
    Threshold,
    require_samples,
)

CHECK = "calibration"
TITLE = "Calibration of probe probabilities"
N_BINS = 10
MIN_SAMPLES = 20  # held-out examples


class Reliability(NamedTuple):
    """ECE and the reliability diagram: per bin, mean predicted, observed frequency, count."""

    ece: float
    bins: list[dict[str, Any]]


def _bin_of(probabilities: np.ndarray, n_bins: int) -> np.ndarray:
    return np.clip((probabilities * n_bins).astype(int), 0, n_bins - 1)  # 1.0 joins the last bin


def reliability(probabilities: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> Reliability:
    """Return the ECE of positive-class ``probabilities`` against 0/1 ``labels``, with its bins."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    b = _bin_of(p, n_bins)
    count = np.bincount(b, minlength=n_bins)
    sum_p = np.bincount(b, weights=p, minlength=n_bins)
    sum_y = np.bincount(b, weights=y, minlength=n_bins)
    bins = [
        {
            "low": k / n_bins,
            "high": (k + 1) / n_bins,
            "mean_predicted": float(sum_p[k] / count[k]) if count[k] else None,
            "observed": float(sum_y[k] / count[k]) if count[k] else None,
            "count": int(count[k]),
        }
        for k in range(n_bins)
    ]
    return Reliability(float(np.abs(sum_p - sum_y).sum() / len(p)), bins)


def bootstrap_ece(
    probabilities: np.ndarray,
    labels: np.ndarray,
    *,
    n_bins: int = N_BINS,
    n_boot: int = 1000,
    seed: int = 0,
) -> Estimate:
    """Return ECE with a 95% percentile-bootstrap interval (resampling the held-out rows)."""
    p = np.asarray(probabilities, dtype=np.float64)
    gap = p - np.asarray(labels, dtype=np.float64)
    n = len(p)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    # ECE = sum over bins of |sum of (p - y) in the bin| / n: one weighted bincount per resample.
    flat = (_bin_of(p, n_bins)[idx] + n_bins * np.arange(n_boot)[:, None]).ravel()
    per_bin = np.bincount(flat, weights=gap[idx].ravel(), minlength=n_boot * n_bins)
    values = np.abs(per_bin.reshape(n_boot, n_bins)).sum(1) / n
    low, high = np.percentile(values, [2.5, 97.5])
    return Estimate(reliability(p, labels, n_bins).ece, float(low), float(high))


def run(
    ctx: CheckContext, thresholds: dict[str, Threshold], *, n_bins: int = N_BINS
) -> CheckResult:
    """Return the held-out ECE of the best layer's logistic probe, judged, with its diagram."""
    labels = np.asarray(ctx.labels).astype(int)
    train, test = ctx.split
    skip = require_samples(CHECK, TITLE, len(test), MIN_SAMPLES, "held-out examples")
    if skip is not None:
        return skip
    X = np.asarray(ctx.features[ctx.best_hook], dtype=np.float64)
    watch = Stopwatch()
    with watch.fit():
        probe = ctx.sweep.fitted.get(("logistic", ctx.best_hook))
        if probe is None:  # a sweep restored without its fitted probes
            probe = LogisticProbe(random_state=ctx.seed).fit(X[train], labels[train])
        p = probe.predict_proba(X[test])[:, 1]
        figure = bootstrap_ece(p, labels[test], n_bins=n_bins, n_boot=ctx.n_boot, seed=ctx.seed)
        diagram = reliability(p, labels[test], n_bins)
    clipped = np.clip(p, 1e-12, 1 - 1e-12)
    y = labels[test]
    return CheckResult.judged(
        CHECK,
        TITLE,
        figure,
        f"expected calibration error ({n_bins} bins) at layer {ctx.best_layer}",
        thresholds["calibration_ece"],
        reason=f"held-out ECE {figure.value:.3f} over {len(test)} examples",
        details={
            "hook_name": ctx.best_hook,
            "layer": ctx.best_layer,
            "n_bins": n_bins,
            "n_test": len(test),
            "interval": "95% percentile bootstrap over held-out rows (ECE's upward bias can put "
            "the whole interval above the point)",
            "brier": float(np.mean((p - y) ** 2)),
            "log_loss": float(-np.mean(y * np.log(clipped) + (1 - y) * np.log(1 - clipped))),
            "reliability": diagram.bins,
        },
        fit_seconds=watch.fit_seconds,
    )
