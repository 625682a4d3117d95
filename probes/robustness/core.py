"""What every robustness check receives and returns, and the thresholds that judge it.

A check reads a ``CheckContext`` (the backbone, the store, the concept's datasets, the stored
features of every layer and the layer sweep) and returns a ``CheckResult``: one headline figure
with its interval, the threshold it is judged against, a verdict, and JSON-ready details.
Thresholds are declared once here (``THRESHOLDS``) and overridden from the CLI or a file.
"""

from __future__ import annotations

import json
import time
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from probes.backbone import Backbone
from probes.datasets import ConceptDataset, Split
from probes.errors import InvalidInputError, UnknownNameError
from probes.metrics import Estimate
from probes.store import ActivationStore
from probes.sweep import SweepResult

Verdict = Literal["pass", "fail", "skipped", "info"]


@dataclass(frozen=True)
class Threshold:
    """One configurable bar: a check passes when its figure is ``op`` ``value``."""

    name: str
    value: float
    op: Literal[">=", "<="]
    description: str

    def passes(self, figure: float) -> bool:
        return figure >= self.value if self.op == ">=" else figure <= self.value


THRESHOLDS: dict[str, Threshold] = {
    t.name: t
    for t in (
        Threshold(
            "presence_auroc",
            0.70,
            ">=",
            "best-layer held-out AUROC: below it the concept is absent",
        ),
        Threshold(
            "selectivity", 0.15, ">=", "AUROC of the real probe minus the control-task probe"
        ),
        Threshold(
            "random_backbone_gap",
            0.05,
            ">=",
            "AUROC of the trained backbone minus a re-initialised one",
        ),
        Threshold("transfer_auroc", 0.65, ">=", "lowest cross-dataset transfer AUROC"),
        Threshold(
            "stability_cosine",
            0.80,
            ">=",
            "mean pairwise cosine of probe directions across resamples",
        ),
        Threshold(
            "stability_auroc_spread", 0.05, "<=", "standard deviation of AUROC across resamples"
        ),
        Threshold(
            "perturbation_drop",
            0.10,
            "<=",
            "largest AUROC drop under typos, case changes or dilution",
        ),
        Threshold(
            "causal_effect", 0.02, ">=", "downstream AUROC drop when the direction is projected out"
        ),
        Threshold(
            "erasure_chance", 0.60, "<=", "AUROC of a fresh probe after LEACE at the same layer"
        ),
        Threshold(
            "mdl_compression", 1.10, ">=", "online-code compression (uniform / online codelength)"
        ),
        Threshold(
            "calibration_ece", 0.10, "<=", "expected calibration error of probe probabilities"
        ),
    )
}


def load_thresholds(
    path: str | Path | None = None, overrides: Mapping[str, float] | None = None
) -> dict[str, Threshold]:
    """Return the thresholds: defaults, then a TOML/JSON file's values, then explicit overrides.

    The file holds ``name = value`` pairs (TOML, optionally under ``[thresholds]``) or a JSON
    object of the same; unknown names are an error listing the known ones.
    """
    values: dict[str, float] = {}
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise InvalidInputError(f"Cannot read thresholds file {p}: {exc.strerror}.") from exc
        try:
            raw = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
            raise InvalidInputError(
                f"Thresholds file {p} is not valid {p.suffix or 'TOML'}: {exc}"
            ) from exc
        raw = raw.get("thresholds", raw)
        values.update(raw)
    values.update(overrides or {})
    result = dict(THRESHOLDS)
    for name, value in values.items():
        if name not in THRESHOLDS:
            raise UnknownNameError(
                f"Unknown threshold {name!r}. Known thresholds: {', '.join(sorted(THRESHOLDS))}."
            )
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise InvalidInputError(f"Threshold {name!r} must be a number. Got {value!r} instead.")
        t = THRESHOLDS[name]
        result[name] = Threshold(name, float(value), t.op, t.description)
    return result


@dataclass
class CheckContext:
    """Everything a check may read. Features are stored activations; no check recomputes them."""

    backbone: Backbone
    store: ActivationStore
    dataset: ConceptDataset  # the concept's primary dataset
    split: Split
    features: dict[str, np.ndarray]  # hook name -> pooled activations [n, d_model]
    labels: np.ndarray  # 0/1, 1 = the concept's positive class
    sweep: SweepResult
    pooling: str = "mean"
    others: list[ConceptDataset] = field(default_factory=list)  # more datasets of the concept
    # Layer sweeps the caller already ran on some of ``others`` (by dataset hash), so that checks
    # reuse their split and fitted probes instead of sweeping again.
    other_sweeps: dict[str, tuple[Split, SweepResult]] = field(default_factory=dict)
    seed: int = 0
    n_boot: int = 1000
    batch_size: int = 32
    progress: bool = True

    @property
    def best_hook(self) -> str:
        return self.sweep.best("logistic").hook_name

    @property
    def best_layer(self) -> int:
        return self.sweep.best("logistic").layer


@dataclass
class CheckResult:
    """One check's outcome: a headline figure with interval, its threshold and the verdict."""

    check: str
    title: str
    figure: Estimate | None
    figure_label: str
    threshold: Threshold | None
    verdict: Verdict
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    forward_seconds: float = 0.0
    fit_seconds: float = 0.0

    @classmethod
    def judged(
        cls,
        check: str,
        title: str,
        figure: Estimate,
        figure_label: str,
        threshold: Threshold,
        **kwargs: Any,
    ) -> CheckResult:
        """Return a result whose verdict is the figure's value judged against ``threshold``."""
        verdict: Verdict = "pass" if threshold.passes(figure.value) else "fail"
        return cls(check, title, figure, figure_label, threshold, verdict, **kwargs)

    @classmethod
    def skipped(cls, check: str, title: str, reason: str, **kwargs: Any) -> CheckResult:
        """Return a result for a check that could not run, with the stated reason."""
        return cls(check, title, None, "", None, "skipped", reason=reason, **kwargs)

    def as_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "title": self.title,
            "figure": self.figure.as_dict() if self.figure else None,
            "figure_label": self.figure_label,
            "threshold": None
            if self.threshold is None
            else {
                "name": self.threshold.name,
                "value": self.threshold.value,
                "op": self.threshold.op,
            },
            "verdict": self.verdict,
            "reason": self.reason,
            "details": self.details,
            "forward_seconds": round(self.forward_seconds, 3),
            "fit_seconds": round(self.fit_seconds, 3),
        }


class Stopwatch:
    """Splits a check's time into backbone forwards and fitting on stored inputs."""

    def __init__(self) -> None:
        self.forward_seconds = 0.0
        self.fit_seconds = 0.0

    @contextmanager
    def forward(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.forward_seconds += time.perf_counter() - start

    @contextmanager
    def fit(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.fit_seconds += time.perf_counter() - start


def require_samples(
    check: str, title: str, n_have: int, n_need: int, what: str
) -> CheckResult | None:
    """Return a skipped result naming how many examples are needed, or None if there are enough."""
    if n_have >= n_need:
        return None
    return CheckResult.skipped(
        check, title, f"needs at least {n_need} {what}; this dataset has {n_have}."
    )
