"""Calibration of raw probe logits into probabilities: Platt scaling or isotonic regression."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from probes.errors import InvalidInputError

CalibrationMethod = Literal["platt", "isotonic"]
CALIBRATION_METHODS: tuple[str, ...] = ("platt", "isotonic")
_EPS = 1e-6  # isotonic fits reach 0 and 1; log loss needs them kept off the edges


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Return the logistic function of ``x``, elementwise."""
    return 1.0 / (1.0 + np.exp(-np.clip(x, -500.0, 500.0)))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> float:
    """Return the expected calibration error over ``n_bins`` equal-width probability bins."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    bins = np.minimum((probs * n_bins).astype(int), n_bins - 1)
    error = 0.0
    for b in range(n_bins):
        rows = bins == b
        if rows.any():
            error += rows.sum() * abs(float(probs[rows].mean()) - float(labels[rows].mean()))
    return error / max(len(probs), 1)


def log_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    """Return the mean binary cross-entropy of ``probs`` against ``labels`` (1 = positive)."""
    p = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1 - _EPS)
    y = np.asarray(labels, dtype=np.float64)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


@dataclass(frozen=True, eq=False)
class Calibrator:
    """A fitted map from raw logits to probabilities.

    ``params`` is [slope, intercept] for Platt scaling and [2, k] (logit knots, probabilities)
    for isotonic regression, interpolated linearly and clipped at the ends as sklearn does.
    """

    method: CalibrationMethod
    params: np.ndarray

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        """Return calibrated probabilities of harm for raw ``logits``."""
        logits = np.asarray(logits, dtype=np.float64)
        if self.method == "platt":
            return sigmoid(self.params[0] * logits + self.params[1])
        return np.clip(np.interp(logits, self.params[0], self.params[1]), 0.0, 1.0)


def fit_calibrator(method: str, logits: np.ndarray, labels: np.ndarray) -> Calibrator:
    """Return a calibrator of ``method`` fitted on raw ``logits`` and binary ``labels``."""
    x = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if method == "platt":
        model = LogisticRegression(C=1e6, max_iter=1000).fit(x[:, None], y)
        params = np.array([float(model.coef_[0, 0]), float(model.intercept_[0])])
        return Calibrator("platt", params)
    if method == "isotonic":
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(x, y)
        knots = np.stack([iso.X_thresholds_, iso.y_thresholds_]).astype(np.float64)
        return Calibrator("isotonic", knots)
    raise InvalidInputError(
        f"Unknown calibration method {method!r}. Expected one of {list(CALIBRATION_METHODS)}."
    )


@dataclass(frozen=True)
class CalibrationReport:
    """How a screen was calibrated: the method chosen and the figures it was chosen by.

    Log losses are 5-fold cross-fitted on the calibration split (an in-sample isotonic fit would
    always win); ``ece_raw`` is of the probe's own sigmoid, ``ece_calibrated`` of the cross-fitted
    calibrated probabilities, both on the calibration split.
    """

    method: CalibrationMethod
    log_loss_platt: float
    log_loss_isotonic: float
    ece_raw: float
    ece_calibrated: float
    n_rows: int


def choose_calibrator(
    logits: np.ndarray, labels: np.ndarray, *, seed: int = 0, n_folds: int = 5
) -> tuple[Calibrator, CalibrationReport]:
    """Return the calibrator (Platt or isotonic) with the lower cross-fitted log loss, and why."""
    x = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    n_folds = min(n_folds, int(np.bincount(y, minlength=2).min()))
    if n_folds < 2:
        raise InvalidInputError(
            "Calibration needs at least two benign and two harmful rows in the calibration split."
        )
    folds = StratifiedKFold(n_folds, shuffle=True, random_state=seed)
    out_of_fold = {m: np.zeros(len(x)) for m in CALIBRATION_METHODS}
    for fit_rows, test_rows in folds.split(x[:, None], y):
        for name in CALIBRATION_METHODS:
            calibrator = fit_calibrator(name, x[fit_rows], y[fit_rows])
            out_of_fold[name][test_rows] = calibrator(x[test_rows])
    losses = {m: log_loss(out_of_fold[m], y) for m in CALIBRATION_METHODS}
    method: CalibrationMethod = "platt" if losses["platt"] <= losses["isotonic"] else "isotonic"
    report = CalibrationReport(
        method=method,
        log_loss_platt=float(losses["platt"]),
        log_loss_isotonic=float(losses["isotonic"]),
        ece_raw=float(expected_calibration_error(sigmoid(x), y)),
        ece_calibrated=float(expected_calibration_error(out_of_fold[method], y)),
        n_rows=len(x),
    )
    return fit_calibrator(method, x, y), report
