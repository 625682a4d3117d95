"""Saving and loading screen banks: safetensors for weights and calibration, validated JSON beside.

A bank folder holds ``bank.safetensors`` and ``bank.json``. The JSON carries ``schema_version``,
the version id (a sha256 of the tensors and of every other JSON field except ``created_at``), the
backbone fingerprint, specs, thresholds and what the bank was trained on. Nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.numpy import load_file, save_file

from audit.screening.calibration import CalibrationReport, Calibrator
from audit.screening.screens import (
    BackboneLike,
    Screen,
    ScreenBank,
    ScreenSpec,
    SpanRule,
    TrainingInfo,
)
from audit.screening.thresholds import Threshold
from probes.atomic import atomic_write
from probes.errors import CorruptArtifactError, FingerprintMismatchError, InvalidInputError
from probes.estimators import LogisticProbe

BANK_SCHEMA_VERSION: Literal[1] = 1
TENSORS_FILE, META_FILE = "bank.safetensors", "bank.json"


class ScreenMeta(BaseModel):
    """One screen's saved metadata: its spec, probe strength, calibration and thresholds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: Literal["logistic_mean", "logistic_max", "ensemble"]
    layers: list[int]
    pooling: str
    n_features: int = Field(gt=0)
    C: float
    calibration: dict[str, Any]
    calibration_shape: list[int]
    block: dict[str, Any]
    flag: dict[str, Any]


class BankMeta(BaseModel):
    """Everything saved beside a bank's tensors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = BANK_SCHEMA_VERSION
    version: str
    created_at: str
    backbone: str
    fingerprint: str
    d_model: int = Field(gt=0)
    primary: str
    training: dict[str, Any]
    screens: list[ScreenMeta]
    span: dict[str, Any] | None = None


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


def _check_tensor(
    tensors: dict[str, np.ndarray], key: str, shape: tuple[int, ...], dtype: Any
) -> None:
    tensor = tensors.get(key)
    if tensor is None or tensor.shape != shape or tensor.dtype != dtype:
        got = "missing" if tensor is None else f"{tensor.dtype} {tensor.shape}"
        raise CorruptArtifactError(
            f"Screen bank tensor {key!r} must be {np.dtype(dtype)} {shape}; got {got}."
        )


def _rebuild_screen(meta: ScreenMeta, tensors: dict[str, np.ndarray]) -> Screen:
    name, n = meta.name, meta.n_features
    expected: dict[str, tuple[tuple[int, ...], Any]] = {
        "coef": ((1, n), np.float64),
        "intercept": ((1,), np.float64),
        "classes": ((2,), np.int64),
        "mean": ((n,), np.float64),
        "scale": ((n,), np.float64),
        "calibration": (tuple(meta.calibration_shape), np.float64),
    }
    for part, (shape, dtype) in expected.items():
        _check_tensor(tensors, f"{name}.{part}", shape, dtype)
    probe = LogisticProbe()
    probe.coef_, probe.intercept_ = tensors[f"{name}.coef"], tensors[f"{name}.intercept"]
    probe.classes_ = tensors[f"{name}.classes"]
    probe.mean_, probe.scale_ = tensors[f"{name}.mean"], tensors[f"{name}.scale"]
    probe.C_ = meta.C
    probe.n_features_in_ = n
    report = CalibrationReport(**meta.calibration)
    calibrator = Calibrator(report.method, tensors[f"{name}.calibration"])
    spec = ScreenSpec(meta.name, meta.kind, tuple(meta.layers), meta.pooling)
    block, flag = Threshold.from_dict(meta.block), Threshold.from_dict(meta.flag)
    return Screen(spec, probe, calibrator, block, flag, report)


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
    try:
        raw = json.loads(meta_path.read_text(encoding="utf-8"))
        meta = BankMeta.model_validate(raw)
    except (ValueError, ValidationError) as exc:
        raise CorruptArtifactError(f"Screen bank metadata {meta_path} is invalid: {exc}") from exc
    if meta.fingerprint != backbone.fingerprint and not allow_fingerprint_mismatch:
        raise FingerprintMismatchError(
            f"Screen bank {folder} was fitted on backbone {meta.backbone} with fingerprint "
            f"{meta.fingerprint}, not {backbone.fingerprint}: refusing to serve rather than "
            "screen with the wrong probe. Refit the screens on this backbone."
        )
    try:
        tensors = load_file(str(tensors_path))
    except Exception as exc:
        raise CorruptArtifactError(
            f"Screen bank weights {tensors_path} are unreadable: {exc}"
        ) from exc
    names = {s.name for s in meta.screens}
    extra = sorted(k for k in tensors if k.split(".")[0] not in names)
    if extra:
        raise CorruptArtifactError(f"Screen bank weights hold tensors no screen names: {extra}.")
    if _version(tensors, raw) != meta.version:
        raise CorruptArtifactError(
            f"Screen bank {folder} does not match its version id {meta.version}: the tensors or "
            "the metadata were changed after saving. Save the bank again from its source."
        )
    try:
        screens = tuple(_rebuild_screen(s, tensors) for s in meta.screens)
        for s in screens:
            if s.probe.coef_.shape[1] != len(s.spec.layers) * meta.d_model:
                raise CorruptArtifactError(
                    f"Screen {s.spec.name!r} has {s.probe.coef_.shape[1]} features; "
                    f"{len(s.spec.layers)} layers of d_model {meta.d_model} give "
                    f"{len(s.spec.layers) * meta.d_model}."
                )
        return ScreenBank(
            screens=screens,
            primary=meta.primary,
            backbone=meta.backbone,
            fingerprint=meta.fingerprint,
            d_model=meta.d_model,
            training=TrainingInfo(**meta.training),
            created_at=meta.created_at,
            span=None if meta.span is None else SpanRule.from_dict(meta.span),
        )
    except (TypeError, KeyError, InvalidInputError) as exc:
        raise CorruptArtifactError(f"Screen bank {folder} is inconsistent: {exc}") from exc
