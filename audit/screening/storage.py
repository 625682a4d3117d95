"""Saving and loading screen banks: safetensors for weights and calibration, validated JSON beside.

A bank folder holds ``bank.safetensors`` and ``bank.json``. The JSON carries ``schema_version``,
the version id (a sha256 of the tensors and of every other JSON field except ``created_at``), the
backbone fingerprint, specs, thresholds and what the bank was trained on. Nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from safetensors.numpy import save_file

from audit.screening.calibration import CalibrationReport, Calibrator
from audit.screening.screens import (
    BackboneLike,
    Screen,
    ScreenBank,
    ScreenSpec,
    SegmentRule,
    SpanRule,
    TrainingInfo,
)
from audit.screening.thresholds import Threshold
from probes.artifacts import check_tensors, read_safetensors, validation_problems
from probes.atomic import atomic_write
from probes.errors import CorruptArtifactError, FingerprintMismatchError, InvalidInputError
from probes.estimators import LogisticProbe

BANK_SCHEMA_VERSION: Literal[1] = 1
TENSORS_FILE, META_FILE = "bank.safetensors", "bank.json"


# Thresholds act on calibrated probabilities; one set just above the top benign score of 1.0
# sits one float step above 1 (threshold_for_fpr), so that is the highest a saved one may be.
_MAX_THRESHOLD = float(np.nextafter(1.0, 2.0))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)


class EstimateMeta(BaseModel):
    """A saved rate with its interval: each a probability, or NaN for a rate over no rows."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    value: float
    low: float
    high: float

    @field_validator("value", "low", "high")
    @classmethod
    def _probability(cls, v: float) -> float:
        if not (math.isnan(v) or 0.0 <= v <= 1.0):
            raise ValueError("must be a rate in [0, 1]")
        return v


class ThresholdMeta(_Strict):
    """A saved threshold (``Threshold.as_dict``): a probability and what it achieved."""

    action: Literal["block", "flag"]
    value: float = Field(ge=0.0, le=_MAX_THRESHOLD)
    target_fpr: float = Field(gt=0.0, lt=1.0)
    fpr: EstimateMeta
    n_benign: int = Field(ge=0)
    n_false_positive: int = Field(ge=0)
    tpr: EstimateMeta | None = None
    n_harmful: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _counts(self) -> ThresholdMeta:
        if self.n_false_positive > self.n_benign:
            raise ValueError(
                f"n_false_positive ({self.n_false_positive}) exceeds n_benign ({self.n_benign})"
            )
        return self


class CalibrationMeta(_Strict):
    """A saved ``CalibrationReport``."""

    method: Literal["platt", "isotonic"]
    log_loss_platt: float = Field(ge=0.0)
    log_loss_isotonic: float = Field(ge=0.0)
    ece_raw: float = Field(ge=0.0, le=1.0)
    ece_calibrated: float = Field(ge=0.0, le=1.0)
    n_rows: int = Field(ge=0)


class TrainingMeta(_Strict):
    """A saved ``TrainingInfo``: what the bank was fitted on."""

    seed: int
    n_train: int = Field(ge=0)
    n_calibration: int = Field(ge=0)
    train_counts: dict[str, int]
    calibration_counts: dict[str, int]
    train_sources: dict[str, int]
    calibration_sources: dict[str, int]
    target_block_fpr: float = Field(gt=0.0, lt=1.0)
    target_flag_fpr: float = Field(gt=0.0, lt=1.0)


def _ordered(block: ThresholdMeta, flag: ThresholdMeta) -> None:
    if block.action != "block" or flag.action != "flag":
        raise ValueError(
            f"the block and flag thresholds hold actions {block.action!r} and {flag.action!r}"
        )
    if flag.value > block.value:
        raise ValueError(
            f"the flag threshold {flag.value} is above the block threshold {block.value}; "
            "flag must be the milder action"
        )


class SpanMeta(_Strict):
    """A saved ``SpanRule``: the primary screen's long-text thresholds."""

    tokens: int = Field(ge=1)
    block: ThresholdMeta
    flag: ThresholdMeta
    n_long_benign: int = Field(ge=0)
    n_long_harmful: int = Field(ge=0)

    @model_validator(mode="after")
    def _order(self) -> SpanMeta:
        _ordered(self.block, self.flag)
        return self


class SegmentMeta(_Strict):
    """A saved ``SegmentRule``: the primary screen's multi-paragraph thresholds."""

    block: ThresholdMeta
    flag: ThresholdMeta
    n_long_benign: int = Field(ge=0)
    n_long_harmful: int = Field(ge=0)

    @model_validator(mode="after")
    def _order(self) -> SegmentMeta:
        _ordered(self.block, self.flag)
        return self


class ScreenMeta(_Strict):
    """One screen's saved metadata: its spec, probe strength, calibration and thresholds."""

    name: str
    kind: Literal["logistic_mean", "logistic_max", "ensemble"]
    layers: list[int] = Field(min_length=1)
    pooling: str
    n_features: int = Field(gt=0)
    C: float = Field(gt=0.0)
    calibration: CalibrationMeta
    calibration_shape: list[int]
    block: ThresholdMeta
    flag: ThresholdMeta

    @field_validator("layers")
    @classmethod
    def _layers(cls, v: list[int]) -> list[int]:
        if min(v) < 0:
            raise ValueError("layers must be non-negative")
        return v

    @model_validator(mode="after")
    def _check(self) -> ScreenMeta:
        _ordered(self.block, self.flag)
        shape = self.calibration_shape
        ok = (
            shape == [2]
            if self.calibration.method == "platt"
            else (len(shape) == 2 and shape[0] == 2 and shape[1] >= 1)
        )
        if not ok:
            want = "[2]" if self.calibration.method == "platt" else "[2, k]"
            raise ValueError(
                f"calibration_shape {shape} does not fit {self.calibration.method} calibration "
                f"(expected {want})"
            )
        return self


class BankMeta(_Strict):
    """Everything saved beside a bank's tensors."""

    schema_version: Literal[1] = BANK_SCHEMA_VERSION
    version: str
    created_at: str
    backbone: str
    fingerprint: str
    d_model: int = Field(gt=0)
    primary: str
    training: TrainingMeta
    screens: list[ScreenMeta] = Field(min_length=1)
    span: SpanMeta | None = None
    segments: SegmentMeta | None = None

    @model_validator(mode="after")
    def _names(self) -> BankMeta:
        names = [s.name for s in self.screens]
        if len(set(names)) != len(names):
            raise ValueError(f"screen names repeat: {names}")
        if self.primary not in names:
            raise ValueError(f"primary {self.primary!r} is none of the screens {names}")
        return self


@dataclass(frozen=True)
class BankContent:
    """A bank as saved: its tensors, its JSON body and the version id hashed from both."""

    tensors: dict[str, np.ndarray]
    body: dict[str, Any]
    version: str


def _screen_tensors(screen: Screen) -> dict[str, np.ndarray]:
    name, probe = screen.spec.name, screen.probe
    return {
        f"{name}.coef": np.ascontiguousarray(probe.coef_, dtype=np.float64),
        f"{name}.intercept": np.ascontiguousarray(probe.intercept_, dtype=np.float64),
        f"{name}.classes": np.asarray(probe.classes_, dtype=np.int64),
        f"{name}.mean": np.ascontiguousarray(probe.mean_, dtype=np.float64),
        f"{name}.scale": np.ascontiguousarray(probe.scale_, dtype=np.float64),
        f"{name}.calibration": np.ascontiguousarray(screen.calibrator.params, dtype=np.float64),
    }


def _version(tensors: dict[str, np.ndarray], body: dict[str, Any]) -> str:
    digest = hashlib.sha256()
    hashed = {k: v for k, v in body.items() if k not in ("version", "created_at")}
    digest.update(json.dumps(hashed, sort_keys=True).encode())
    for key in sorted(tensors):
        tensor = tensors[key]
        digest.update(f"{key}:{tensor.dtype.str}:{tensor.shape}".encode())
        digest.update(np.ascontiguousarray(tensor).tobytes())
    return digest.hexdigest()


def bank_content(bank: ScreenBank) -> BankContent:
    """Return the tensors and JSON body ``save_bank`` writes, with the bank's version id."""
    tensors: dict[str, np.ndarray] = {}
    screens = []
    for s in bank.screens:
        tensors.update(_screen_tensors(s))
        screens.append(
            {
                "name": s.spec.name,
                "kind": s.spec.kind,
                "layers": list(s.spec.layers),
                "pooling": s.spec.pooling,
                "n_features": int(s.probe.coef_.shape[1]),
                "C": float(s.probe.C_),
                "calibration": asdict(s.calibration),
                "calibration_shape": list(s.calibrator.params.shape),
                "block": s.block.as_dict(),
                "flag": s.flag.as_dict(),
            }
        )
    body: dict[str, Any] = {
        "schema_version": BANK_SCHEMA_VERSION,
        "version": "",
        "created_at": bank.created_at,
        "backbone": bank.backbone,
        "fingerprint": bank.fingerprint,
        "d_model": bank.d_model,
        "primary": bank.primary,
        "training": asdict(bank.training),
        "screens": screens,
    }
    if bank.span is not None:
        body["span"] = bank.span.as_dict()
    if bank.segments is not None:
        body["segments"] = bank.segments.as_dict()
    # A JSON round trip first, so the hash sees exactly what load_bank will read back.
    body = json.loads(json.dumps(body))
    version = _version(tensors, body)
    body["version"] = version
    return BankContent(tensors, body, version)


def save_bank(bank: ScreenBank, folder: str | Path) -> Path:
    """Write ``bank`` as ``bank.safetensors`` + ``bank.json`` in ``folder``; return the folder."""
    folder = Path(folder)
    content = bank_content(bank)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / TENSORS_FILE, lambda tmp: save_file(content.tensors, tmp))
        text = json.dumps(content.body, indent=1)
        atomic_write(folder / META_FILE, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    except OSError as exc:
        raise InvalidInputError(
            f"Cannot write the screen bank at {folder}: {exc.strerror}. Choose a writable folder."
        ) from exc
    return folder


def _expected_tensors(meta: ScreenMeta) -> dict[str, tuple[tuple[int, ...], Any]]:
    name, n = meta.name, meta.n_features
    return {
        f"{name}.coef": ((1, n), np.float64),
        f"{name}.intercept": ((1,), np.float64),
        f"{name}.classes": ((2,), np.int64),
        f"{name}.mean": ((n,), np.float64),
        f"{name}.scale": ((n,), np.float64),
        f"{name}.calibration": (tuple(meta.calibration_shape), np.float64),
    }


def _check_values(meta: ScreenMeta, tensors: dict[str, np.ndarray], where: str, fix: str) -> None:
    name = meta.name
    if not (tensors[f"{name}.scale"] > 0).all():
        raise CorruptArtifactError(
            f"{where}: tensor '{name}.scale' must be > 0 everywhere (it divides the "
            f"activations). {fix}"
        )
    if sorted(tensors[f"{name}.classes"].tolist()) != [0, 1]:
        raise CorruptArtifactError(
            f"{where}: tensor '{name}.classes' must be [0, 1] (benign, harmful); got "
            f"{tensors[f'{name}.classes'].tolist()}. {fix}"
        )
    if meta.calibration.method == "isotonic":
        knots = tensors[f"{name}.calibration"]
        if (np.diff(knots[0]) < 0).any() or (knots[1] < 0).any() or (knots[1] > 1).any():
            raise CorruptArtifactError(
                f"{where}: tensor '{name}.calibration' must hold increasing logit knots and "
                f"probabilities in [0, 1] (isotonic calibration). {fix}"
            )


def _rebuild_screen(meta: ScreenMeta, tensors: dict[str, np.ndarray]) -> Screen:
    name, n = meta.name, meta.n_features
    probe = LogisticProbe()
    probe.coef_, probe.intercept_ = tensors[f"{name}.coef"], tensors[f"{name}.intercept"]
    probe.classes_ = tensors[f"{name}.classes"]
    probe.mean_, probe.scale_ = tensors[f"{name}.mean"], tensors[f"{name}.scale"]
    probe.C_ = meta.C
    probe.n_features_in_ = n
    report = CalibrationReport(**meta.calibration.model_dump())
    calibrator = Calibrator(report.method, tensors[f"{name}.calibration"])
    spec = ScreenSpec(meta.name, meta.kind, tuple(meta.layers), meta.pooling)
    block = Threshold.from_dict(meta.block.model_dump())
    flag = Threshold.from_dict(meta.flag.model_dump())
    return Screen(spec, probe, calibrator, block, flag, report)


def _edited_note(raw: object, tensors_path: Path) -> str:
    """Return a note when a bank's files no longer match the version id saved with them."""
    if not isinstance(raw, dict) or not isinstance(raw.get("version"), str):
        return ""
    try:
        tensors = read_safetensors(tensors_path, "Screen bank weights", "")
        edited = _version(tensors, raw) != raw["version"]
    except Exception:  # the note is a courtesy; the refusal stands without it
        return ""
    return (
        f" The bank no longer matches its version id {raw['version']}: it was changed after saving."
        if edited
        else ""
    )


def load_bank(
    folder: str | Path, backbone: BackboneLike, *, allow_fingerprint_mismatch: bool = False
) -> ScreenBank:
    """Return the bank saved in ``folder``, refusing one fitted on another backbone.

    Screening with a probe made for other weights gives confident nonsense, so a fingerprint
    mismatch raises FingerprintMismatchError (refuse to serve rather than screen with the wrong
    probe). Missing, unreadable or tampered files raise CorruptArtifactError.
    """
    folder = Path(folder)
    tensors_path, meta_path = folder / TENSORS_FILE, folder / META_FILE
    for path in (tensors_path, meta_path):
        if not path.is_file():
            raise CorruptArtifactError(f"Screen bank file {path} is missing.")
    fix = "Save the bank again from its source (audit screen fit)."
    try:
        raw = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # JSON and UTF-8 errors are ValueErrors
        raise CorruptArtifactError(
            f"Screen bank metadata {meta_path} is invalid: it is not readable JSON ({exc}). {fix}"
        ) from exc
    try:
        meta = BankMeta.model_validate(raw)
    except ValidationError as exc:
        raise CorruptArtifactError(
            f"Screen bank metadata {meta_path} is invalid: {validation_problems(exc)}."
            f"{_edited_note(raw, tensors_path)} {fix}"
        ) from exc
    if meta.fingerprint != backbone.fingerprint and not allow_fingerprint_mismatch:
        raise FingerprintMismatchError(
            f"Screen bank {folder} was fitted on backbone {meta.backbone} with fingerprint "
            f"{meta.fingerprint}, not {backbone.fingerprint}: refusing to serve rather than "
            "screen with the wrong probe. Refit the screens on this backbone."
        )
    tensors = read_safetensors(tensors_path, "Screen bank weights", fix)
    where = f"Screen bank weights {tensors_path}"
    expected: dict[str, tuple[tuple[int, ...], Any]] = {}
    for s in meta.screens:
        expected.update(_expected_tensors(s))
    check_tensors(tensors, expected, where, fix)
    for s in meta.screens:
        _check_values(s, tensors, where, fix)
        if s.n_features != len(s.layers) * meta.d_model:
            raise CorruptArtifactError(
                f"Screen bank metadata {meta_path}: screen {s.name!r} has {s.n_features} "
                f"features; {len(s.layers)} layers of d_model {meta.d_model} give "
                f"{len(s.layers) * meta.d_model}. {fix}"
            )
    if _version(tensors, raw) != meta.version:
        raise CorruptArtifactError(
            f"Screen bank {folder} does not match its version id {meta.version}: the tensors or "
            "the metadata were changed after saving. Save the bank again from its source."
        )
    try:
        screens = tuple(_rebuild_screen(s, tensors) for s in meta.screens)
        return ScreenBank(
            screens=screens,
            primary=meta.primary,
            backbone=meta.backbone,
            fingerprint=meta.fingerprint,
            d_model=meta.d_model,
            training=TrainingInfo(**meta.training.model_dump()),
            created_at=meta.created_at,
            span=None if meta.span is None else SpanRule.from_dict(meta.span.model_dump()),
            segments=(
                None if meta.segments is None else SegmentRule.from_dict(meta.segments.model_dump())
            ),
        )
    except (TypeError, KeyError, InvalidInputError) as exc:
        raise CorruptArtifactError(f"Screen bank {folder} is inconsistent: {exc}. {fix}") from exc
