"""Linear probes as scikit-learn estimators: logistic regression and difference of means."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from probes.errors import InvalidInputError


def _check_two_classes(estimator: BaseEstimator, y: np.ndarray) -> np.ndarray:
    check_classification_targets(y)
    classes = np.unique(y)
    if len(classes) < 2:
        raise InvalidInputError(
            f"{type(estimator).__name__} needs labels of at least two classes; got one class "
            f"only ({classes.tolist()}). Add examples of the other class."
        )
    return classes


# scikit-learn 1.8+ warns unless these are explicit (plain L2, the new attribute layout).
_CV_KWARGS = {
    name: value
    for name, value in (("l1_ratios", (0.0,)), ("use_legacy_attributes", False))
    if name in inspect.signature(LogisticRegressionCV).parameters
}


class _LinearProbe(ClassifierMixin, BaseEstimator):
    """Shared scoring of probes that end in ``coef_`` [n_directions, d] and ``intercept_``."""

    coef_: np.ndarray
    intercept_: np.ndarray
    classes_: np.ndarray

    def decision_function(self, X: Any) -> np.ndarray:
        """Return the signed distance of each row along the probe direction(s)."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False)
        scores = X @ self.coef_.T + self.intercept_
        return scores.ravel() if scores.shape[1] == 1 else scores

    def predict(self, X: Any) -> np.ndarray:
        """Return the predicted class of each row."""
        scores = self.decision_function(X)
        if scores.ndim == 1:
            return self.classes_[(scores > 0).astype(int)]
        return self.classes_[scores.argmax(1)]

    @property
    def direction_(self) -> np.ndarray:
        """Return the unit-norm probe direction (binary probes), shape [d]."""
        check_is_fitted(self)
        coef = self.coef_[0]
        return coef / max(float(np.linalg.norm(coef)), 1e-12)


class LogisticProbe(_LinearProbe):
    """Logistic-regression probe whose L2 strength is chosen by cross-validation on the fit data.

    ``Cs`` is the grid of inverse strengths (or a count, as in LogisticRegressionCV); a grid of one
    value fits that strength directly, without cross-validation.

    Features are standardised inside the probe; ``coef_`` and ``intercept_`` are mapped back to
    the raw activation space, so ``X @ coef_.T + intercept_`` scores raw activations.
    """

    def __init__(
        self,
        Cs: int | tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0),
        cv: int = 3,
        max_iter: int = 2000,
        random_state: int | None = 0,
    ) -> None:
        self.Cs = Cs
        self.cv = cv
        self.max_iter = max_iter
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> LogisticProbe:
        """Fit the probe on activations ``X`` [n, d] and labels ``y``; return self."""
        X, y = validate_data(self, X, y)
        self.classes_ = _check_two_classes(self, y)
        self.mean_ = X.mean(0)
        self.scale_ = X.std(0)
        # A dimension whose spread is float noise next to the others (a LayerNorm can leave a
        # few such) is constant: standardising it would blow its noise up into the direction.
        self.scale_[self.scale_ < max(1e-12, 1e-6 * float(self.scale_.max(initial=0.0)))] = 1.0
        Z = (X - self.mean_) / self.scale_
        counts = np.unique(y, return_counts=True)[1]
        n_folds = min(self.cv, int(counts.min()))
        fixed = None if isinstance(self.Cs, int) or len(self.Cs) != 1 else float(self.Cs[0])
        model: Any
        if fixed is not None:  # one strength given: nothing to choose, so no cross-validation
            self.C_ = fixed
            model = LogisticRegression(C=fixed, max_iter=self.max_iter).fit(Z, y)
        elif n_folds >= 2:
            model = LogisticRegressionCV(
                Cs=list(self.Cs) if not isinstance(self.Cs, int) else self.Cs,
                cv=StratifiedKFold(n_folds, shuffle=True, random_state=self.random_state),
                scoring="neg_log_loss",
                max_iter=self.max_iter,
                random_state=self.random_state,
                **_CV_KWARGS,
            )
            model.fit(Z, y)
            self.C_ = float(np.atleast_1d(model.C_)[0])
        else:  # too few examples of a class to cross-validate: fall back to a middle strength
            self.C_ = 1.0
            model = LogisticRegression(C=self.C_, max_iter=self.max_iter).fit(Z, y)
        self.n_iter_ = np.array([int(np.max(model.n_iter_))])
        self.coef_ = model.coef_ / self.scale_
        self.intercept_ = model.intercept_ - self.coef_ @ self.mean_
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """Return class probabilities, [n, n_classes]."""
        scores = self.decision_function(X)
        if scores.ndim == 1:
            p1 = 1.0 / (1.0 + np.exp(-scores))
            return np.stack([1 - p1, p1], axis=1)
        scores = scores - scores.max(1, keepdims=True)
        e = np.exp(scores)
        return e / e.sum(1, keepdims=True)


class MassMeanProbe(_LinearProbe):
    """Difference-of-means (mass-mean) probe: the direction from one class mean to the other.

    Binary only. The direction is fixed by the class means; a logistic fit of the 1-D projection
    (Platt scaling) on the fit data then sets its scale and threshold.
    """

    def __init__(self, normalize: bool = True) -> None:
        self.normalize = normalize

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        return tags

    def fit(self, X: Any, y: Any) -> MassMeanProbe:
        """Fit the direction on activations ``X`` [n, d] and binary labels ``y``; return self."""
        X, y = validate_data(self, X, y)
        self.classes_ = _check_two_classes(self, y)
        if len(self.classes_) != 2:
            raise InvalidInputError(
                "Only binary classification is supported. MassMeanProbe got "
                f"{len(self.classes_)} classes ({self.classes_.tolist()}); use LogisticProbe "
                "for more classes."
            )
        mu0 = X[y == self.classes_[0]].mean(0)
        mu1 = X[y == self.classes_[1]].mean(0)
        direction = mu1 - mu0
        if self.normalize:
            direction = direction / max(float(np.linalg.norm(direction)), 1e-12)
        midpoint = (mu0 + mu1) / 2
        projections = X @ direction - float(direction @ midpoint)
        # Platt scaling of the 1-D projection sets the scale and the threshold, so that
        # decision_function is a calibrated logit and predict agrees with predict_proba.
        spread = float(projections.std()) or 1.0
        platt = LogisticRegression(C=1e4, max_iter=1000).fit(projections[:, None] / spread, y)
        slope = float(platt.coef_[0, 0]) / spread
        self.coef_ = slope * direction[None, :]
        self.intercept_ = np.array(
            [float(platt.intercept_[0]) - slope * float(direction @ midpoint)]
        )
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """Return class probabilities, [n, 2]."""
        p1 = 1.0 / (1.0 + np.exp(-self.decision_function(X)))
        return np.stack([1 - p1, p1], axis=1)


PROBE_KINDS: dict[str, type[_LinearProbe]] = {
    "logistic": LogisticProbe,
    "mass_mean": MassMeanProbe,
}
