"""The baseline a checkpoint is compared with: figures and probes, bound to one fingerprint.

A folder (commit it beside the spec)::

    baseline.json        schema_version, spec name and digest, backbone name and fingerprint,
                         per concept: dataset, its hash, and per layer the held-out AUROC;
                         screening and tenant-head figures; when it was recorded
    probes/<concept>-L<layer>.safetensors + .json   each layer's logistic probe

Only safetensors and validated JSON are read; a baseline from another spec sample (dataset hash)
is refused with the fix (record it again with --audit-update-baseline).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from audit.checkpoint.concepts import ConceptRun
from audit.checkpoint.spec import AuditSpec, spec_digest
from audit.errors import AuditError
from probes.artifacts import ProbeMeta, load_probe, read_meta, save_probe
from probes.atomic import atomic_write
from probes.backbone import Backbone
from probes.errors import CorruptArtifactError, FingerprintMismatchError, InvalidInputError
from probes.hooks import resid_post

BASELINE_SCHEMA_VERSION: Literal[1] = 1
BASELINE_FILE = "baseline.json"


class BaselineError(AuditError, CorruptArtifactError):
    """A baseline that is missing, unreadable, or recorded for another spec sample."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ConceptBaseline(_Model):
    dataset: str
    dataset_hash: str
    n_samples: int = Field(ge=0)  # texts the dataset gave
    requested: int = Field(ge=0)  # the spec's sample size (a small dataset gives fewer)
    auroc: dict[str, float]  # layer (as a string: JSON keys) -> held-out AUROC

    @field_validator("auroc")
    @classmethod
    def _auroc(cls, v: dict[str, float]) -> dict[str, float]:
        for layer, value in v.items():
            if not layer.isdigit():
                raise ValueError(f"layer key {layer!r} is not a non-negative int")
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"the AUROC of layer {layer} is {value}, outside [0, 1]")
        return v


class BaselineRecord(_Model):
    schema_version: Literal[1] = BASELINE_SCHEMA_VERSION
    spec_name: str
    spec_digest: str
    backbone: str
    fingerprint: str
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat())
    concepts: dict[str, ConceptBaseline] = Field(default_factory=dict)
    screening: dict[str, Any] | None = None
    heads: dict[str, dict[str, Any]] = Field(default_factory=dict)


@dataclass
class Baseline:
    """A loaded baseline: its record and its probes (keyed by concept and layer)."""

    folder: Path
    record: BaselineRecord
    probes: dict[tuple[str, int], Any]

    @property
    def fingerprint(self) -> str:
        return self.record.fingerprint

    def concept_auroc(self, concept: str) -> dict[int, float]:
        return {int(k): v for k, v in self.record.concepts[concept].auroc.items()}

    def concept_probes(self, concept: str) -> dict[int, Any]:
        return {layer: p for (c, layer), p in self.probes.items() if c == concept}


def _probe_path(folder: Path, concept: str, layer: int) -> Path:
    return folder / "probes" / f"{concept}-L{layer}"


def save_baseline(
    folder: str | Path,
    *,
    spec: AuditSpec,
    backbone: Backbone,
    concepts: dict[str, ConceptRun],
    screening: dict[str, Any] | None = None,
    heads: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """Write the baseline of ``backbone`` under ``spec`` into ``folder``; return baseline.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    records = {}
    for name, run in concepts.items():
        scores = {s.layer: s for s in run.result.sweep.scores if s.probe == "logistic"}
        records[name] = ConceptBaseline(
            dataset=run.dataset.name,
            dataset_hash=run.dataset.hash,
            n_samples=run.dataset.n_samples,
            requested=spec.samples(name),
            auroc={str(layer): scores[layer].auroc.value for layer in spec.concepts[name].layers},
        )
        for layer in spec.concepts[name].layers:
            meta = ProbeMeta(
                kind="logistic",
                concept=name,
                dataset=run.dataset.name,
                dataset_hash=run.dataset.hash,
                layer=layer,
                hook_name=resid_post(layer),
                pooling=run.result.pooling,
                d_model=backbone.d_model,
                label_names=list(run.dataset.label_names),
                backbone=backbone.name,
                fingerprint=backbone.fingerprint,
                metrics={"auroc": scores[layer].auroc.as_dict()},
            )
            save_probe(run.probe(layer), _probe_path(folder, name, layer), meta)
    record = BaselineRecord(
        spec_name=spec.name,
        spec_digest=spec_digest(spec),
        backbone=backbone.name,
        fingerprint=backbone.fingerprint,
        concepts=records,
        screening=screening,
        heads=heads or {},
    )
    path = folder / BASELINE_FILE
    body = json.dumps(record.model_dump(mode="json"), indent=1) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(body))
    return path


def load_baseline(folder: str | Path, spec: AuditSpec) -> Baseline:
    """Return the baseline in ``folder`` with the probes ``spec`` needs, checked against it."""
    folder = Path(folder)
    path = folder / BASELINE_FILE
    if not path.is_file():
        raise BaselineError(
            f"No baseline at {folder}: record one from the checkpoint now served with "
            "`pytest --audit-checkpoint PATH --audit-update-baseline`."
        )
    record = read_meta(
        BaselineRecord,
        path,
        "Baseline",
        "Record it again with --audit-update-baseline on the served checkpoint.",
        BaselineError,
    )
    probes: dict[tuple[str, int], Any] = {}
    for name, concept in spec.concepts.items():
        have = record.concepts.get(name)
        missing = [] if have is None else [la for la in concept.layers if str(la) not in have.auroc]
        if have is None or missing:
            what = f"concept {name!r}" if have is None else f"layers {missing} of {name!r}"
            raise BaselineError(
                f"Baseline {path} has no {what}: the spec asks for more than was recorded. "
                "Record it again with --audit-update-baseline on the served checkpoint."
            )
        if have.dataset != spec.dataset(name) or have.requested != spec.samples(name):
            raise BaselineError(
                f"Baseline {path} measured {name!r} on {have.dataset} with {have.requested} "
                f"samples asked for; the spec now asks for {spec.dataset(name)} with "
                f"{spec.samples(name)}. Record it again with --audit-update-baseline."
            )
        for layer in concept.layers:
            try:
                probe, meta = load_probe(
                    _probe_path(folder, name, layer).with_suffix(".json"),
                    fingerprint=record.fingerprint,
                )
            except (CorruptArtifactError, InvalidInputError, FingerprintMismatchError) as exc:
                raise BaselineError(
                    f"Baseline {folder}: the probe of {name!r} at layer {layer} is unusable: "
                    f"{exc} Record the baseline again with --audit-update-baseline."
                ) from exc
            if meta.layer != layer or meta.concept != name:
                raise BaselineError(
                    f"Baseline {folder}: the probe file for {name!r} at layer {layer} holds the "
                    f"probe of {meta.concept!r} at layer {meta.layer}. Record the baseline "
                    "again with --audit-update-baseline."
                )
            probes[(name, layer)] = probe
    return Baseline(folder, record, probes)
