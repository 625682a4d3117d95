"""Saving and loading fitted probes: safetensors for the weights, validated JSON for the rest.

Nothing here unpickles: a probe file is a safetensors tensor file plus a JSON sidecar, and both
are checked (schema, shapes, dtypes, backbone fingerprint) before a probe is rebuilt.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.numpy import load_file, save_file

from probes.atomic import atomic_write
from probes.errors import CorruptArtifactError, FingerprintMismatchError, InvalidInputError
from probes.estimators import LogisticProbe, MassMeanProbe

PROBE_SCHEMA_VERSION: Literal[1] = 1


class ProbeMeta(BaseModel):
    """Everything saved beside a probe's weights."""

    model_config = ConfigDict(extra="allow", frozen=True)

    schema_version: Literal[1] = PROBE_SCHEMA_VERSION
    kind: Literal["logistic", "mass_mean"]
    concept: str
    dataset: str | None = None
    dataset_hash: str | None = None
    layer: int
    hook_name: str
    pooling: str
    d_model: int = Field(gt=0)
    label_names: list[str]
    backbone: str
    fingerprint: str
    metrics: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, float] = Field(default_factory=dict)
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat())


def _paths(path: str | Path) -> tuple[Path, Path]:
    base = Path(path)
    if base.suffix in (".safetensors", ".json"):
        base = base.with_suffix("")
    return base.with_name(base.name + ".safetensors"), base.with_name(base.name + ".json")


def save_probe(probe: Any, path: str | Path, meta: ProbeMeta) -> Path:
    """Write ``probe`` as ``<path>.safetensors`` + ``<path>.json``; return the JSON path."""
    tensors_path, meta_path = _paths(path)
    tensors = {
        "coef": np.ascontiguousarray(probe.coef_, dtype=np.float64),
        "intercept": np.ascontiguousarray(probe.intercept_, dtype=np.float64),
        "classes": np.asarray(probe.classes_, dtype=np.int64),
    }
    params = dict(meta.params)
    if isinstance(probe, LogisticProbe):
        tensors["mean"] = np.ascontiguousarray(probe.mean_, dtype=np.float64)
        tensors["scale"] = np.ascontiguousarray(probe.scale_, dtype=np.float64)
        params["C"] = float(probe.C_)
    try:
        tensors_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(tensors_path, lambda tmp: save_file(tensors, tmp))
        body = meta.model_copy(update={"params": params}).model_dump(mode="json")
        atomic_write(meta_path, lambda tmp: Path(tmp).write_text(json.dumps(body, indent=1)))
    except OSError as exc:
        raise InvalidInputError(
            f"Cannot write probe files at {tensors_path.parent}: {exc.strerror}. "
            "Choose a writable folder."
        ) from exc
    return meta_path


def load_probe(
    path: str | Path, *, fingerprint: str | None = None, allow_fingerprint_mismatch: bool = False
) -> tuple[LogisticProbe | MassMeanProbe, ProbeMeta]:
    """Return a saved probe and its metadata, refusing one made on another backbone.

    ``fingerprint`` is the backbone the caller will apply the probe to; a probe fitted on another
    fingerprint raises FingerprintMismatchError unless ``allow_fingerprint_mismatch`` is set.
    """
    given = Path(path)
    if given.suffix not in ("", ".safetensors", ".json"):
        raise InvalidInputError(
            f"Probes load only from safetensors + JSON files, never from {given.suffix!r} files "
            "(pickles can run code). Give the probe's .json or .safetensors path."
        )
    tensors_path, meta_path = _paths(given)
    for p in (tensors_path, meta_path):
        if not p.exists():
            raise InvalidInputError(f"Probe file {p} does not exist.")
    try:
        meta = ProbeMeta.model_validate_json(meta_path.read_text())
    except ValidationError as exc:
        raise CorruptArtifactError(f"Probe metadata {meta_path} is invalid: {exc}") from exc
    if (
        fingerprint is not None
        and meta.fingerprint != fingerprint
        and not allow_fingerprint_mismatch
    ):
        raise FingerprintMismatchError(
            f"Probe {meta_path.name} was fitted on backbone {meta.backbone} with fingerprint "
            f"{meta.fingerprint}, not {fingerprint}. Refit it on this backbone, or pass "
            "allow_fingerprint_mismatch=True for a deliberate cross-backbone evaluation."
        )
    try:
        tensors = load_file(str(tensors_path))
    except Exception as exc:
        raise CorruptArtifactError(f"Probe weights {tensors_path} are unreadable: {exc}") from exc
    n_dir = len(meta.label_names) if len(meta.label_names) > 2 else 1
    expected = {
        "coef": ((n_dir, meta.d_model), np.float64),
        "intercept": ((n_dir,), np.float64),
        "classes": ((len(meta.label_names),), np.int64),
    }
    if meta.kind == "logistic":
        expected["mean"] = ((meta.d_model,), np.float64)
        expected["scale"] = ((meta.d_model,), np.float64)
    for name, (shape, dtype) in expected.items():
        tensor = tensors.get(name)
        if tensor is None or tensor.shape != shape or tensor.dtype != dtype:
            got = "missing" if tensor is None else f"{tensor.dtype} {tensor.shape}"
            raise CorruptArtifactError(
                f"Probe weights {tensors_path.name}: tensor {name!r} must be {np.dtype(dtype)} "
                f"{shape}; got {got}."
            )
    probe: LogisticProbe | MassMeanProbe
    if meta.kind == "logistic":
        probe = LogisticProbe()
        probe.mean_, probe.scale_ = tensors["mean"], tensors["scale"]
        probe.C_ = float(meta.params.get("C", 1.0))
    else:
        probe = MassMeanProbe()
    probe.coef_, probe.intercept_ = tensors["coef"], tensors["intercept"]
    probe.classes_ = tensors["classes"]
    probe.n_features_in_ = meta.d_model
    return probe, meta
