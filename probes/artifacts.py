"""Saving and loading fitted probes: safetensors for the weights, validated JSON for the rest.

Nothing here unpickles: a probe file is a safetensors tensor file plus a JSON sidecar, and both
are checked (schema, shapes, dtypes, backbone fingerprint) before a probe is rebuilt.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.numpy import load_file, save_file

from probes.atomic import atomic_write
from probes.errors import CorruptArtifactError, FingerprintMismatchError, InvalidInputError
from probes.estimators import LogisticProbe, MassMeanProbe

PROBE_SCHEMA_VERSION: Literal[1] = 1


class ProbeMeta(BaseModel):
    """Everything saved beside a probe's weights."""

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)

    schema_version: Literal[1] = PROBE_SCHEMA_VERSION
    kind: Literal["logistic", "mass_mean"]
    concept: str
    dataset: str | None = None
    dataset_hash: str | None = None
    layer: int = Field(ge=0)
    hook_name: str
    pooling: str
    d_model: int = Field(gt=0)
    label_names: list[str] = Field(min_length=2)
    backbone: str
    fingerprint: str
    metrics: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, float] = Field(default_factory=dict)
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat())


# ------------------------------------------------------------------ shared loading checks
_PICKLE_FIX = (
    "Nothing here unpickles (a pickle can run code when loaded): save the artifact again with "
    "this package, which writes safetensors."
)


def sniff_weights_file(path: Path) -> str | None:
    """Return why ``path`` is not a complete safetensors file (a pickle, truncated...), or None.

    Only the first bytes and the header are read; nothing is deserialised.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(9)
            n_header = struct.unpack("<Q", head[:8])[0] if len(head) >= 8 else -1
            if len(head) == 9 and head[8:9] == b"{" and 8 + n_header <= size:
                handle.seek(8)  # a safetensors header: its length, then a JSON object
            elif head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
                return f"it is a Python pickle, not safetensors. {_PICKLE_FIX}"
            elif head[:4] == b"PK\x03\x04":
                return (
                    "it is a zip archive (what torch.save writes, with a pickle inside), not "
                    f"safetensors. {_PICKLE_FIX}"
                )
            elif len(head) < 9:
                return f"it is truncated: {size} bytes, too short for a safetensors header"
            elif 8 + n_header > size:
                return (
                    f"it is truncated: its header claims {n_header} bytes but the file has "
                    f"{size} bytes in all"
                )
            else:
                return "its header is not safetensors JSON (a garbled or foreign file)"
            header = json.loads(handle.read(n_header))
    except OSError as exc:
        return f"it cannot be read ({exc.strerror})"
    except (ValueError, UnicodeDecodeError):
        return "its header is not safetensors JSON (a garbled or foreign file)"
    if not isinstance(header, dict):
        return "its header is not safetensors JSON (a garbled or foreign file)"
    try:
        ends = [
            int(v["data_offsets"][1])
            for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict) and len(v.get("data_offsets", ())) == 2
        ]
    except (TypeError, ValueError):
        return "its header is not safetensors JSON (a garbled or foreign file)"
    if 8 + n_header + max(ends, default=0) > size:
        return (
            f"it is truncated: its tensors need {8 + n_header + max(ends)} bytes but the file "
            f"has {size}"
        )
    return None


def read_safetensors(
    path: Path, what: str, fix: str, loader: Callable[[str], Mapping[str, Any]] = load_file
) -> dict[str, Any]:
    """Return the tensors of the safetensors file ``path``, never unpickling.

    ``loader`` reads it (default: ``safetensors.numpy.load_file``; pass
    ``safetensors.torch.load_file`` for torch tensors). A pickle, a ``torch.save`` archive, a
    truncated or garbled file raises CorruptArtifactError naming ``what`` (e.g. "Probe
    weights"), the file, the problem and ``fix``.
    """
    problem = sniff_weights_file(path)
    if problem is None:
        try:
            return dict(loader(str(path)))
        except Exception as exc:  # safetensors raises its own error types for broken files
            problem = f"it is not a readable safetensors file ({exc})"
    raise CorruptArtifactError(f"{what} {path} are unreadable and were refused: {problem}. {fix}")


def check_tensors(
    tensors: Mapping[str, Any],
    expected: Mapping[str, tuple[tuple[int, ...], Any]],
    where: str,
    fix: str,
) -> None:
    """Raise CorruptArtifactError unless ``tensors`` are exactly ``expected`` (name: shape, dtype).

    Each tensor's name, shape and dtype are checked, and floating tensors must be finite; the
    message names ``where`` (the file), the tensor, what was expected, what was found and ``fix``.
    ``tensors`` may hold numpy arrays or torch tensors; dtypes compare by name ("float32").
    """
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing}")
        if extra:
            parts.append(f"unexpected tensors {extra}")
        raise CorruptArtifactError(
            f"{where}: {' and '.join(parts)}; expected exactly {sorted(expected)}. {fix}"
        )
    for name, (shape, dtype) in expected.items():
        tensor = tensors[name]
        got_dtype = _dtype_name(tensor.dtype)
        want_dtype = _dtype_name(dtype)
        if tuple(tensor.shape) != tuple(shape) or got_dtype != want_dtype:
            raise CorruptArtifactError(
                f"{where}: tensor {name!r} must be {want_dtype} of shape {tuple(shape)}; got "
                f"{got_dtype} of shape {tuple(tensor.shape)}. {fix}"
            )
        if want_dtype.startswith(("float", "bfloat")):
            values = np.asarray(tensor.float() if hasattr(tensor, "float") else tensor)
            if not np.isfinite(values).all():
                raise CorruptArtifactError(
                    f"{where}: tensor {name!r} holds NaN or infinite values. {fix}"
                )


def _dtype_name(dtype: Any) -> str:
    text = str(dtype)
    return text.removeprefix("torch.") if text.startswith("torch.") else str(np.dtype(dtype))


def validation_problems(exc: ValidationError, limit: int = 3) -> str:
    """Return a pydantic error as one line: each bad field's path, the problem and the value."""
    parts = []
    for error in exc.errors()[:limit]:
        loc = ".".join(str(part) for part in error["loc"]) or "(top level)"
        value = error.get("input")
        shown = "" if error["type"] in ("missing", "json_invalid") else f" (got {value!r:.60})"
        parts.append(f"{loc}: {error['msg']}{shown}")
    more = exc.error_count() - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


_Meta = TypeVar("_Meta", bound=BaseModel)


def read_meta(
    model: type[_Meta],
    path: Path,
    what: str,
    fix: str,
    error: type[CorruptArtifactError] = CorruptArtifactError,
) -> _Meta:
    """Return the JSON file ``path`` validated as ``model``; raise ``error`` naming the field.

    ``what`` names the file in the message ("Probe metadata"), ``fix`` says what to do.
    """
    try:
        return model.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        raise error(f"{what} {path} is invalid: {validation_problems(exc)}. {fix}") from None
    except OSError as exc:
        raise error(f"{what} {path} cannot be read ({exc.strerror}). {fix}") from None


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
    fix = "Refit the probe and save it again (save_probe)."
    meta = read_meta(ProbeMeta, meta_path, "Probe metadata", fix)
    c_value = meta.params.get("C")
    if c_value is not None and not (math.isfinite(c_value) and c_value > 0):
        raise CorruptArtifactError(
            f"Probe metadata {meta_path}: params.C must be a finite float > 0; got {c_value!r}. "
            f"{fix}"
        )
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
    tensors = read_safetensors(tensors_path, "Probe weights", fix)
    n_dir = len(meta.label_names) if len(meta.label_names) > 2 else 1
    expected: dict[str, tuple[tuple[int, ...], Any]] = {
        "coef": ((n_dir, meta.d_model), np.float64),
        "intercept": ((n_dir,), np.float64),
        "classes": ((len(meta.label_names),), np.int64),
    }
    if meta.kind == "logistic":
        expected["mean"] = ((meta.d_model,), np.float64)
        expected["scale"] = ((meta.d_model,), np.float64)
    check_tensors(tensors, expected, f"Probe weights {tensors_path}", fix)
    if meta.kind == "logistic" and not (tensors["scale"] > 0).all():
        raise CorruptArtifactError(
            f"Probe weights {tensors_path}: tensor 'scale' must be > 0 everywhere (it divides "
            f"the activations). {fix}"
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
