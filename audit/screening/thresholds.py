"""Thresholds set from a target false-positive rate on benign rows, with exact binomial intervals."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import beta

from probes.errors import InvalidInputError
from probes.metrics import Estimate


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> Estimate:
    """Return k/n with its exact (Clopper-Pearson) binomial confidence interval."""
    if n <= 0:
        return Estimate(float("nan"), 0.0, 1.0)
    alpha = 1.0 - confidence
    low = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return Estimate(k / n, low, high)


@dataclass(frozen=True)
class Threshold:
    """A score threshold (a row at or above it is caught) and what it achieved where it was set.

    ``fpr`` is measured on the ``n_benign`` benign rows the threshold was set from; ``tpr`` on
    ``n_harmful`` harmful rows of the same split (None when none were given).
    """

    action: str  # "block" or "flag"
    value: float
    target_fpr: float
    fpr: Estimate
    n_benign: int
    n_false_positive: int
    tpr: Estimate | None = None
    n_harmful: int = 0

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (``from_dict`` reads it back)."""
        return {
            "action": self.action,
            "value": self.value,
            "target_fpr": self.target_fpr,
            "fpr": self.fpr.as_dict(),
            "n_benign": self.n_benign,
            "n_false_positive": self.n_false_positive,
            "tpr": None if self.tpr is None else self.tpr.as_dict(),
            "n_harmful": self.n_harmful,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Threshold:
        """Return the threshold ``as_dict`` wrote."""
        tpr = data.get("tpr")
        return cls(
            action=str(data["action"]),
            value=float(data["value"]),
            target_fpr=float(data["target_fpr"]),
            fpr=Estimate(**data["fpr"]),
            n_benign=int(data["n_benign"]),
            n_false_positive=int(data["n_false_positive"]),
            tpr=None if tpr is None else Estimate(**tpr),
            n_harmful=int(data.get("n_harmful", 0)),
        )


def check_fpr(target_fpr: float, name: str = "target_fpr") -> float:
    """Return ``target_fpr`` if it is a float in (0, 1); raise InvalidInputError otherwise."""
    if isinstance(target_fpr, bool) or not isinstance(target_fpr, (int, float)):
        raise InvalidInputError(f"{name} must be a float in (0, 1). Got {target_fpr!r} instead.")
    if not 0.0 < float(target_fpr) < 1.0:
        raise InvalidInputError(f"{name} must be a float in (0, 1). Got {target_fpr!r} instead.")
    return float(target_fpr)


def measure_threshold(
    action: str,
    value: float,
    target_fpr: float,
    benign_scores: np.ndarray,
    harmful_scores: np.ndarray | None = None,
) -> Threshold:
    """Return the threshold ``value`` with its FPR (and TPR) measured on the given scores."""
    benign = np.asarray(benign_scores, dtype=np.float64)
    n_fp = int((benign >= value).sum())
    tpr, n_harmful = None, 0
    if harmful_scores is not None and len(harmful_scores):
        harmful = np.asarray(harmful_scores, dtype=np.float64)
        n_harmful = len(harmful)
        tpr = clopper_pearson(int((harmful >= value).sum()), n_harmful)
    return Threshold(
        action=action,
        value=float(value),
        target_fpr=target_fpr,
        fpr=clopper_pearson(n_fp, len(benign)),
        n_benign=len(benign),
        n_false_positive=n_fp,
        tpr=tpr,
        n_harmful=n_harmful,
    )


def threshold_for_fpr(
    action: str,
    target_fpr: float,
    benign_scores: np.ndarray,
    harmful_scores: np.ndarray | None = None,
) -> Threshold:
    """Return the lowest threshold whose FPR on ``benign_scores`` is at most ``target_fpr``.

    With n benign rows at most floor(target * n) of them score at or above the threshold, so the
    achieved FPR never exceeds the target on the rows it was set from (ties can make it lower).
    """
    target_fpr = check_fpr(target_fpr)
    benign = np.sort(np.asarray(benign_scores, dtype=np.float64))[::-1]
    if len(benign) == 0:
        raise InvalidInputError(f"Setting the {action} threshold needs benign scores; got none.")
    if not np.isfinite(benign).all():
        raise InvalidInputError(f"Benign scores for the {action} threshold must be finite.")
    n_allowed = int(np.floor(target_fpr * len(benign) + 1e-9))
    if n_allowed >= len(benign):
        value = float(benign[-1])
    else:  # just above the first benign score that must stay below the threshold
        value = float(np.nextafter(benign[n_allowed], np.inf))
    return measure_threshold(action, value, target_fpr, benign, harmful_scores)
