"""Held-out metrics with percentile-bootstrap 95% confidence intervals."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import rankdata


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap confidence interval."""

    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Return the area under the ROC curve of binary ``labels`` (1 = positive) by ``scores``."""
    return float(_auroc_rows(scores[None, :], labels[None, :].astype(bool))[0])


def _auroc_rows(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    # Mann-Whitney U per row, with ties ranked by their average.
    ranks = rankdata(scores, axis=1)
    n_pos = positive.sum(1)
    n_neg = positive.shape[1] - n_pos
    rank_sum = (ranks * positive).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _auroc_resamples(scores: np.ndarray, positive: np.ndarray, idx: np.ndarray) -> np.ndarray:
    # AUROC of each resample (row of idx) without sorting each one: every resample keeps the
    # full sample's order of scores, so counting, per group of equal scores, the resampled
    # positives and negatives, and the negatives below each group, gives Mann-Whitney's U.
    n_boot, n = idx.shape
    _, group = np.unique(scores, return_inverse=True)
    n_groups = int(group.max()) + 1
    rows = np.arange(n_boot)[:, None]
    counts = np.bincount((idx + rows * n).ravel(), minlength=n_boot * n).reshape(n_boot, n)
    keys = (group[None, :] + rows * n_groups).ravel()
    size = n_boot * n_groups
    pos = np.bincount(keys, weights=(counts * positive).ravel(), minlength=size)
    neg = np.bincount(keys, weights=(counts * ~positive).ravel(), minlength=size)
    pos, neg = pos.reshape(n_boot, n_groups), neg.reshape(n_boot, n_groups)
    below = np.cumsum(neg, axis=1) - neg
    u = (pos * (below + 0.5 * neg)).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return u / (pos.sum(1) * neg.sum(1))


def bootstrap_auroc(
    scores: np.ndarray, labels: np.ndarray, *, n_boot: int = 1000, seed: int = 0
) -> Estimate:
    """Return AUROC with a 95% percentile-bootstrap interval (resampling the held-out rows)."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(labels).astype(bool)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(scores), size=(n_boot, len(scores)))
    values = _auroc_resamples(scores, positive, idx)
    values = values[np.isfinite(values)]  # resamples that drew one class only
    point = auroc(scores, positive)
    low, high = np.percentile(values, [2.5, 97.5]) if len(values) else (np.nan, np.nan)
    return Estimate(point, float(low), float(high))


def bootstrap_auroc_difference(
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    labels: np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> Estimate:
    """Return AUROC(a) minus AUROC(b) on the same rows, with a paired 95% bootstrap interval.

    Both score vectors are resampled with the same row indices, so the interval reflects the
    difference (an edit's effect, a baseline's gap), not two independent uncertainties added up.
    """
    a = np.asarray(scores_a, dtype=np.float64)
    b = np.asarray(scores_b, dtype=np.float64)
    positive = np.asarray(labels).astype(bool)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n_boot, len(a)))
    diffs = _auroc_resamples(a, positive, idx) - _auroc_resamples(b, positive, idx)
    diffs = diffs[np.isfinite(diffs)]  # resamples that drew one class only
    point = auroc(a, positive) - auroc(b, positive)
    low, high = np.percentile(diffs, [2.5, 97.5]) if len(diffs) else (np.nan, np.nan)
    return Estimate(float(point), float(low), float(high))


def bootstrap_accuracy(
    predicted: np.ndarray, labels: np.ndarray, *, n_boot: int = 1000, seed: int = 0
) -> Estimate:
    """Return accuracy with a 95% percentile-bootstrap interval."""
    correct = (np.asarray(predicted) == np.asarray(labels)).astype(np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(correct), size=(n_boot, len(correct)))
    values = correct[idx].mean(1)
    low, high = np.percentile(values, [2.5, 97.5])
    return Estimate(float(correct.mean()), float(low), float(high))
