"""Per-layer probe sweep: fit each probe kind at each hook, score it on the held-out split."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import clone
from tqdm.auto import tqdm

from probes.errors import InvalidInputError, UnknownNameError
from probes.estimators import PROBE_KINDS
from probes.hooks import block_of
from probes.metrics import Estimate, bootstrap_accuracy, bootstrap_auroc


@dataclass(frozen=True)
class LayerScore:
    """One probe kind at one hook: held-out accuracy and AUROC with 95% intervals."""

    probe: str
    hook_name: str
    layer: int
    pooling: str
    accuracy: Estimate
    auroc: Estimate
    n_train: int
    n_test: int
    params: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "probe": self.probe,
            "hook_name": self.hook_name,
            "layer": self.layer,
            "pooling": self.pooling,
            "accuracy": self.accuracy.as_dict(),
            "auroc": self.auroc.as_dict(),
            "n_train": self.n_train,
            "n_test": self.n_test,
            "params": dict(self.params),
        }


@dataclass
class SweepResult:
    """Scores of every (probe kind, hook) and the fitted probes behind them."""

    scores: list[LayerScore]
    fitted: dict[tuple[str, str], Any]

    def best(self, probe: str = "logistic") -> LayerScore:
        """Return the score of ``probe`` at its best hook by held-out AUROC (earliest on ties)."""
        rows = [s for s in self.scores if s.probe == probe]
        if not rows:
            raise UnknownNameError(f"No scores for probe {probe!r}; have {self.probe_kinds}.")
        return max(rows, key=lambda s: (round(s.auroc.value, 6), -s.layer))

    @property
    def probe_kinds(self) -> list[str]:
        return list(dict.fromkeys(s.probe for s in self.scores))


def _layer_of(hook_name: str) -> int:
    layer = block_of(hook_name)
    return -1 if layer is None else layer


def sweep_layers(
    features: Mapping[str, np.ndarray],
    labels: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    *,
    pooling: str = "mean",
    probe_kinds: Sequence[str] = ("logistic", "mass_mean"),
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = True,
    probe_params: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
) -> SweepResult:
    """Return the sweep of ``probe_kinds`` over every hook in ``features`` ([n, d] per hook).

    Binary labels only (1 = the concept's positive class); probes are fitted on ``train`` rows and
    scored on ``test`` rows. ``probe_params`` sets estimator parameters per (probe kind, hook),
    e.g. ``{("logistic", hook): {"Cs": (0.1,)}}`` to fit a fixed strength.
    """
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if len(classes) != 2:
        raise InvalidInputError(
            f"A layer sweep scores binary concepts (AUROC); got {len(classes)} classes "
            f"{classes.tolist()}. Give data with exactly two label values."
        )
    for name in (("train", train), ("test", test)):
        if len(np.unique(labels[name[1]])) < 2:
            raise InvalidInputError(
                f"The {name[0]} split holds one class only; give more examples of each class."
            )
    unknown = [k for k in probe_kinds if k not in PROBE_KINDS]
    if unknown:
        raise UnknownNameError(f"Unknown probe kind(s) {unknown}; expected {sorted(PROBE_KINDS)}.")
    positive = (labels == classes[1]).astype(int)
    scores: list[LayerScore] = []
    fitted: dict[tuple[str, str], Any] = {}
    jobs = [(kind, hook) for hook in features for kind in probe_kinds]
    for kind, hook in tqdm(jobs, desc="probing", disable=not progress, leave=False):
        X = np.asarray(features[hook])
        probe = clone(PROBE_KINDS[kind]())
        probe.set_params(**(probe_params or {}).get((kind, hook), {}))
        probe.fit(X[train], positive[train])
        held_out = probe.decision_function(X[test])
        predicted = probe.predict(X[test])
        params = {"C": float(probe.C_)} if hasattr(probe, "C_") else {}
        scores.append(
            LayerScore(
                probe=kind,
                hook_name=hook,
                layer=_layer_of(hook),
                pooling=pooling,
                accuracy=bootstrap_accuracy(predicted, positive[test], n_boot=n_boot, seed=seed),
                auroc=bootstrap_auroc(held_out, positive[test], n_boot=n_boot, seed=seed),
                n_train=len(train),
                n_test=len(test),
                params=params,
            )
        )
        fitted[(kind, hook)] = probe
    return SweepResult(scores, fitted)
