"""The screen bank: calibrated linear probes that decide allow / flag / block per request.

Screens read pooled activations that the serving forward already produced (``ScreenBank.readers``
names them), so screening never runs the backbone a second time.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, Literal, Protocol

import numpy as np

from audit.screening.calibration import CalibrationReport, Calibrator, choose_calibrator
from audit.screening.thresholds import (
    Threshold,
    check_fpr,
    measure_threshold,
    threshold_for_fpr,
)
from probes.errors import InvalidInputError
from probes.estimators import LogisticProbe
from probes.hooks import resid_post
from probes.pooling import POOLINGS
from probes.requests import RequestSet
from probes.store import ActivationStore

logger = logging.getLogger(__name__)

Reader = tuple[str, str]  # (hook_name, pooling), as the serving engine's readers
ScreenKind = Literal["logistic_mean", "logistic_max", "ensemble"]
SCREEN_KINDS: tuple[str, ...] = ("logistic_mean", "logistic_max", "ensemble")
Action = Literal["allow", "flag", "block"]


class BackboneLike(Protocol):
    """What fitting and loading need of a backbone: its name, fingerprint, width and depth."""

    name: str
    fingerprint: str
    d_model: int
    n_layers: int


@dataclass(frozen=True)
class ScreenSpec:
    """What a screen reads and how: a name, a kind, the residual layers and the pooling.

    ``logistic_mean`` / ``logistic_max`` read one layer pooled by mean / max; ``ensemble`` is one
    logistic probe on the concatenation of several layers' pooled vectors (a single linear map,
    so it saves, scores and calibrates like the others).
    """

    name: str
    kind: ScreenKind
    layers: tuple[int, ...]
    pooling: str = "mean"

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(int(layer) for layer in self.layers))
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise InvalidInputError(
                f"A screen name must be letters, digits, '_' or '-'. Got {self.name!r} instead."
            )
        if self.kind not in SCREEN_KINDS:
            raise InvalidInputError(
                f"The 'kind' of ScreenSpec must be one of {list(SCREEN_KINDS)}. "
                f"Got {self.kind!r} instead."
            )
        needed = {"logistic_mean": "mean", "logistic_max": "max"}.get(self.kind)
        if needed is not None and self.pooling != needed:
            raise InvalidInputError(
                f"A {self.kind} screen pools by {needed!r}. Got pooling {self.pooling!r} instead."
            )
        if self.pooling not in POOLINGS:
            raise InvalidInputError(
                f"The 'pooling' of ScreenSpec must be one of {list(POOLINGS)}. "
                f"Got {self.pooling!r} instead."
            )
        n_layers = 1 if self.kind != "ensemble" else None
        if not self.layers or (n_layers is not None and len(self.layers) != n_layers):
            raise InvalidInputError(
                f"A {self.kind} screen reads {'one layer' if n_layers else 'one or more layers'}. "
                f"Got layers {self.layers!r} instead."
            )
        if len(set(self.layers)) != len(self.layers) or min(self.layers) < 0:
            raise InvalidInputError(
                f"Screen layers must be distinct non-negative ints. Got {self.layers!r} instead."
            )

    @property
    def readers(self) -> tuple[Reader, ...]:
        """Return the (hook, pooling) pairs this screen reads, in feature order."""
        return tuple((resid_post(layer), self.pooling) for layer in self.layers)


DEFAULT_SPECS: tuple[ScreenSpec, ...] = (
    ScreenSpec("logistic_mean_l4", "logistic_mean", (4,), "mean"),
    ScreenSpec("logistic_max_l4", "logistic_max", (4,), "max"),
    ScreenSpec("ensemble_l2_5", "ensemble", (2, 3, 4, 5), "mean"),
)


@dataclass(frozen=True, eq=False)
class Screen:
    """A fitted screen: probe, calibrator, thresholds and how it was calibrated."""

    spec: ScreenSpec
    probe: LogisticProbe
    calibrator: Calibrator
    block: Threshold
    flag: Threshold
    calibration: CalibrationReport

    def features(self, pooled: Mapping[Reader, np.ndarray]) -> np.ndarray:
        """Return the probe's input, [n_rows, len(layers) * d_model], from pooled activations."""
        parts = []
        for reader in self.spec.readers:
            if reader not in pooled:
                raise InvalidInputError(
                    f"Screen {self.spec.name!r} reads {reader}, which the pooled activations lack. "
                    "Ask the engine for ScreenBank.readers."
                )
            parts.append(np.asarray(pooled[reader], dtype=np.float64))
        return np.concatenate(parts, axis=1)

    def raw_logits(self, pooled: Mapping[Reader, np.ndarray]) -> np.ndarray:
        """Return the probe's uncalibrated logits of harm, [n_rows]."""
        return np.asarray(self.probe.decision_function(self.features(pooled)), dtype=np.float64)

    def scores(self, pooled: Mapping[Reader, np.ndarray]) -> np.ndarray:
        """Return calibrated probabilities of harm, [n_rows]."""
        return self.calibrator(self.raw_logits(pooled))

    def decide(self, scores: np.ndarray) -> list[Action]:
        """Return allow / flag / block for each calibrated score."""
        return [
            "block" if s >= self.block.value else "flag" if s >= self.flag.value else "allow"
            for s in np.asarray(scores, dtype=np.float64)
        ]


@dataclass(frozen=True)
class TrainingInfo:
    """What a bank was fitted on: counts per split and source, the seed and the FPR targets."""

    seed: int
    n_train: int
    n_calibration: int
    train_counts: dict[str, int]
    calibration_counts: dict[str, int]
    train_sources: dict[str, int]
    calibration_sources: dict[str, int]
    target_block_fpr: float
    target_flag_fpr: float


@dataclass(frozen=True)
class SpanRule:
    """The primary screen's rule for long texts: its score over the strongest span of tokens.

    A mean-pooled screen dilutes a short harmful passage inside long benign text. For each window
    the screener also scores every run of ``tokens`` consecutive tokens (the same linear read,
    averaged over the run instead of the whole window) and keeps the highest. Long benign texts
    score higher on that maximum than short ones, so it has thresholds of its own, set on long
    benign texts made from the calibration split (``block`` / ``flag``, never below the bank's),
    and a text is blocked when either its whole-window score or its span score reaches its
    threshold.
    """

    tokens: int
    block: Threshold
    flag: Threshold
    n_long_benign: int
    n_long_harmful: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "block": self.block.as_dict(),
            "flag": self.flag.as_dict(),
            "n_long_benign": self.n_long_benign,
            "n_long_harmful": self.n_long_harmful,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SpanRule:
        return cls(
            tokens=int(data["tokens"]),
            block=Threshold.from_dict(data["block"]),
            flag=Threshold.from_dict(data["flag"]),
            n_long_benign=int(data["n_long_benign"]),
            n_long_harmful=int(data["n_long_harmful"]),
        )

    def effective(self, score: float, span_score: float, block: float, flag: float) -> float:
        """Return one score on the bank's scale: the larger of ``score`` and the span score
        mapped so that its flag / block thresholds land on the bank's (piecewise linear)."""
        return _on_bank_scale(score, span_score, self.flag.value, self.block.value, block, flag)


@dataclass(slots=True)  # built per request: slotted, not frozen (see screener.WindowScore)
class ScreenDecision:
    """One request's decision: the action, the primary screen's score and every screen's score."""

    decision: Action
    score: float
    screen: str
    version: str
    block_threshold: float
    flag_threshold: float
    scores: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class SegmentRule:
    """The primary screen's rule for texts made of several lines or paragraphs.

    A harmful request set off as its own paragraph inside long benign text is diluted in every
    window that holds it. The screener also scores each segment (a line or paragraph; runs of
    lines are merged when a text has more than ``MAX_SEGMENTS``) as a request of its own, and
    keeps the highest. A long benign text holds many segments, so that maximum runs higher than a
    single request's score: the rule has thresholds of its own, set on long benign texts made
    from the calibration split (never below the bank's), and a text is blocked when either its
    whole-text score or its segment score reaches its threshold.
    """

    block: Threshold
    flag: Threshold
    n_long_benign: int
    n_long_harmful: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "block": self.block.as_dict(),
            "flag": self.flag.as_dict(),
            "n_long_benign": self.n_long_benign,
            "n_long_harmful": self.n_long_harmful,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SegmentRule:
        return cls(
            block=Threshold.from_dict(data["block"]),
            flag=Threshold.from_dict(data["flag"]),
            n_long_benign=int(data["n_long_benign"]),
            n_long_harmful=int(data["n_long_harmful"]),
        )

    def effective(self, score: float, segment_score: float, block: float, flag: float) -> float:
        """Return one score on the bank's scale (see ``SpanRule.effective``)."""
        return _on_bank_scale(score, segment_score, self.flag.value, self.block.value, block, flag)


def _on_bank_scale(
    score: float, other: float, other_flag: float, other_block: float, block: float, flag: float
) -> float:
    """Return the larger of ``score`` and ``other`` mapped so that its flag / block thresholds
    land on the bank's (piecewise linear)."""
    knots_x = [0.0, other_flag, other_block, 1.0]
    knots_y = [0.0, flag, block, 1.0]
    for i in range(1, 4):  # strictly increasing knots for interpolation
        knots_x[i] = max(knots_x[i], knots_x[i - 1] + 1e-12)
    return max(score, float(np.interp(other, knots_x, knots_y)))


@dataclass(frozen=True, eq=False)
class ScreenBank:
    """Fitted screens over one backbone; ``primary`` decides, the others are reported beside it."""

    screens: tuple[Screen, ...]
    primary: str
    backbone: str
    fingerprint: str
    d_model: int
    training: TrainingInfo
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    span: SpanRule | None = None  # the primary's long-text rule (``catalog.fit_span_rule``)
    segments: SegmentRule | None = None  # its multi-paragraph rule (``catalog.fit_segment_rule``)

    def __post_init__(self) -> None:
        names = [s.spec.name for s in self.screens]
        if len(set(names)) != len(names):
            raise InvalidInputError(f"Screen names must be distinct. Got {names} instead.")
        if self.primary not in names:
            raise InvalidInputError(
                f"The primary screen must be one of {names}. Got {self.primary!r} instead."
            )

    def screen(self, name: str) -> Screen:
        """Return the screen called ``name``."""
        for s in self.screens:
            if s.spec.name == name:
                return s
        raise InvalidInputError(
            f"No screen called {name!r}. Expected one of {[s.spec.name for s in self.screens]}."
        )

    @property
    def readers(self) -> tuple[Reader, ...]:
        """Return every (hook, pooling) pair ``score`` reads, each once, sorted."""
        return tuple(sorted({r for s in self.screens for r in s.spec.readers}))

    @cached_property
    def version(self) -> str:
        """Return the bank's version id: a hash of its weights, calibration and metadata."""
        from audit.screening.storage import bank_content

        return bank_content(self).version

    def scores(self, pooled: Mapping[Reader, np.ndarray]) -> dict[str, np.ndarray]:
        """Return each screen's calibrated scores, [n_rows] per screen name."""
        n_rows = {np.shape(pooled[r])[0] for r in self.readers if r in pooled}
        if len(n_rows) > 1:
            raise InvalidInputError(
                f"Pooled activations must have one row count for every reader. Got {n_rows}."
            )
        return {s.spec.name: s.scores(pooled) for s in self.screens}

    def score(self, pooled: Mapping[Reader, np.ndarray]) -> list[ScreenDecision]:
        """Return one decision per row, decided by the primary screen, every screen's score kept."""
        scores = self.scores(pooled)
        primary = self.screen(self.primary)
        actions = primary.decide(scores[self.primary])
        version = self.version
        return [
            ScreenDecision(
                decision=action,
                score=float(scores[self.primary][i]),
                screen=self.primary,
                version=version,
                block_threshold=primary.block.value,
                flag_threshold=primary.flag.value,
                scores={name: float(values[i]) for name, values in scores.items()},
            )
            for i, action in enumerate(actions)
        ]

    def with_flag_threshold(
        self,
        benign: np.ndarray | Mapping[Reader, np.ndarray],
        target_fpr: float,
        *,
        screen: str | None = None,
    ) -> ScreenBank:
        """Return a copy whose flag threshold is set from a tenant's benign rows; block is kept.

        ``benign`` is either the screen's calibrated scores of the tenant's benign requests or
        their pooled activations (``readers``). The new flag threshold never rises above the
        block threshold, so flag stays the milder action.
        """
        target_fpr = check_fpr(target_fpr)
        name = screen or self.primary
        chosen = self.screen(name)
        if isinstance(benign, Mapping):
            benign_scores = chosen.scores(benign)
        else:
            benign_scores = np.asarray(benign, dtype=np.float64).reshape(-1)
        flag = threshold_for_fpr("flag", target_fpr, benign_scores)
        if flag.value > chosen.block.value:
            logger.warning(
                "The recalibrated flag threshold %.4f of screen %s is above its block threshold "
                "%.4f; it is capped at the block threshold.",
                flag.value,
                name,
                chosen.block.value,
            )
            flag = measure_threshold("flag", chosen.block.value, target_fpr, benign_scores)
        screens = tuple(replace(s, flag=flag) if s is chosen else s for s in self.screens)
        return replace(self, screens=screens, created_at=datetime.now(UTC).isoformat())


def _counts(requests: RequestSet) -> tuple[dict[str, int], dict[str, int]]:
    return requests.class_counts(), dict(Counter(requests.sources))


def _check_split(requests: RequestSet, name: str) -> None:
    counts = requests.class_counts()
    if min(counts.values()) < 2:
        raise InvalidInputError(
            f"The {name} split needs at least two benign and two harmful requests. Got {counts}."
        )


def fit_screens(
    backbone: Any,
    store: ActivationStore,
    *,
    train: RequestSet,
    calibration: RequestSet,
    specs: Sequence[ScreenSpec] = DEFAULT_SPECS,
    target_block_fpr: float = 0.01,
    target_flag_fpr: float = 0.05,
    seed: int = 0,
    primary: str | None = None,
    progress: bool = False,
) -> ScreenBank:
    """Return a bank of screens fitted on ``train`` and calibrated on ``calibration``.

    Each screen's logistic probe (L2 strength by cross-validation) is fitted on ``train``; on
    ``calibration`` its logits are calibrated (Platt or isotonic, whichever has the lower
    cross-fitted log loss) and its thresholds are set so that at most ``target_block_fpr`` /
    ``target_flag_fpr`` of the benign calibration rows are blocked / flagged. The primary screen
    (default: the first ensemble, else the first screen) decides.
    """
    target_block_fpr = check_fpr(target_block_fpr, "target_block_fpr")
    target_flag_fpr = check_fpr(target_flag_fpr, "target_flag_fpr")
    if target_block_fpr > target_flag_fpr:
        raise InvalidInputError(
            f"target_block_fpr ({target_block_fpr}) must not exceed target_flag_fpr "
            f"({target_flag_fpr}): blocking is the stricter action."
        )
    specs = tuple(specs)
    if not specs:
        raise InvalidInputError("fit_screens needs at least one ScreenSpec.")
    for spec in specs:
        if max(spec.layers) >= backbone.n_layers:
            raise InvalidInputError(
                f"Screen {spec.name!r} reads layer {max(spec.layers)}, but the backbone has "
                f"layers 0 to {backbone.n_layers - 1}."
            )
    _check_split(train, "train")
    _check_split(calibration, "calibration")
    readers = sorted({r for s in specs for r in s.readers})
    hooks = sorted({h for h, _ in readers})
    poolings = sorted({p for _, p in readers})
    # One extraction per split covers every hook and pooling of every screen.
    fit_acts = store.get(backbone, train.texts, hooks, poolings, progress=progress).pooled
    cal_acts = store.get(backbone, calibration.texts, hooks, poolings, progress=progress).pooled
    y_cal = calibration.labels
    screens = []
    for spec in specs:
        probe = LogisticProbe(random_state=seed)
        x_fit = np.concatenate([fit_acts[r] for r in spec.readers], axis=1)
        probe.fit(x_fit, train.labels)
        x_cal = np.concatenate([cal_acts[r] for r in spec.readers], axis=1)
        logits = np.asarray(probe.decision_function(x_cal), dtype=np.float64)
        calibrator, report = choose_calibrator(logits, y_cal, seed=seed)
        scores = calibrator(logits)
        benign, harmful = scores[y_cal == 0], scores[y_cal == 1]
        block = threshold_for_fpr("block", target_block_fpr, benign, harmful)
        flag = threshold_for_fpr("flag", target_flag_fpr, benign, harmful)
        logger.info(
            "screen %s: C=%g, %s calibration (ECE %.3f -> %.3f), block %.4f, flag %.4f",
            spec.name,
            probe.C_,
            report.method,
            report.ece_raw,
            report.ece_calibrated,
            block.value,
            flag.value,
        )
        screens.append(Screen(spec, probe, calibrator, block, flag, report))
    if primary is None:
        ensembles = [s.name for s in specs if s.kind == "ensemble"]
        primary = ensembles[0] if ensembles else specs[0].name
    train_counts, train_sources = _counts(train)
    cal_counts, cal_sources = _counts(calibration)
    training = TrainingInfo(
        seed=seed,
        n_train=train.n_samples,
        n_calibration=calibration.n_samples,
        train_counts=train_counts,
        calibration_counts=cal_counts,
        train_sources=train_sources,
        calibration_sources=cal_sources,
        target_block_fpr=target_block_fpr,
        target_flag_fpr=target_flag_fpr,
    )
    return ScreenBank(
        screens=tuple(screens),
        primary=primary,
        backbone=backbone.name,
        fingerprint=backbone.fingerprint,
        d_model=backbone.d_model,
        training=training,
    )


def describe(bank: ScreenBank) -> dict[str, Any]:
    """Return a JSON-ready summary of a bank: specs, calibration and thresholds per screen."""
    return {
        "version": bank.version,
        "primary": bank.primary,
        "span": None if bank.span is None else bank.span.as_dict(),
        "segments": None if bank.segments is None else bank.segments.as_dict(),
        "fingerprint": bank.fingerprint,
        "training": asdict(bank.training),
        "screens": [
            {
                "spec": asdict(s.spec),
                "calibration": asdict(s.calibration),
                "block": s.block.as_dict(),
                "flag": s.flag.as_dict(),
            }
            for s in bank.screens
        ],
    }
