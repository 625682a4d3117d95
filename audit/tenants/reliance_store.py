"""A head's concept-reliance report, kept next to its weights so a head is audited once.

The file ``reliance.json`` in the head's folder holds the latest audit: the report
(``RelianceReport.as_dict()``), the settings it ran with and when. It goes when the head's folder
goes (deleting the head or its tenant), and a later audit of the same head replaces it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from audit.tenants.registry import NotFoundError
from audit.tenants.reliance import (
    DEFAULT_CONCEPTS,
    DEFAULT_MAX_SAMPLES,
    DEFAULT_MAX_TEXTS,
    DEFAULT_N_CONTROLS,
    RelianceError,
    RelianceReport,
    RelianceScore,
    audit_head,
)
from audit.tenants.service import TenantService
from probes.atomic import atomic_write

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
RELIANCE_FILE = "reliance.json"


@dataclass(frozen=True)
class RelianceSettings:
    """How a reliance audit ran: the ``audit_head`` arguments besides the head and texts."""

    concepts: tuple[str, ...] = DEFAULT_CONCEPTS
    method: str = "leace"
    max_texts: int = DEFAULT_MAX_TEXTS
    max_samples: int = DEFAULT_MAX_SAMPLES
    n_controls: int = DEFAULT_N_CONTROLS
    seed: int = 0


@dataclass(frozen=True)
class StoredReliance:
    """A head's saved reliance report, the settings it ran with and when (UTC, ISO 8601)."""

    report: RelianceReport
    settings: RelianceSettings
    saved_at: str


class _ScoreFile(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    score: float
    mean_abs_change: float
    fraction_flipped: float | None
    weight_cosine: float | None
    mean_difference_cosine: float | None
    probe_auroc: float | None = None

    def score_(self) -> RelianceScore:
        return RelianceScore(**self.model_dump())


class _ReportFile(BaseModel):
    # The report's derived fields (summary, scores, score_definition) are rebuilt, not read.
    model_config = ConfigDict(extra="ignore")

    schema_version: int
    head_id: str
    tenant_id: str
    kind: str
    task: str
    input_hook: str
    pooling: str
    method: str
    n_texts: int
    backbone_fingerprint: str
    concepts: list[_ScoreFile]
    control: _ScoreFile
    n_controls: int
    direction_source: str | None
    notes: list[str] = []


class _SettingsFile(BaseModel):
    concepts: tuple[str, ...]
    method: str
    max_texts: int
    max_samples: int
    n_controls: int
    seed: int


class _RelianceFile(BaseModel):
    schema_version: int
    saved_at: str
    settings: _SettingsFile
    report: _ReportFile


def report_from_dict(payload: dict[str, object]) -> RelianceReport:
    """Return the RelianceReport that ``RelianceReport.as_dict()`` wrote as ``payload``."""
    try:
        parsed = _ReportFile.model_validate(payload)
    except ValidationError as exc:
        raise RelianceError(f"Not a reliance report: {exc.errors()[0]['msg']}.") from exc
    return _report(parsed)


def _report(parsed: _ReportFile) -> RelianceReport:
    return RelianceReport(
        head_id=parsed.head_id,
        tenant_id=parsed.tenant_id,
        kind=parsed.kind,
        task=parsed.task,
        input_hook=parsed.input_hook,
        pooling=parsed.pooling,
        method=parsed.method,
        n_texts=parsed.n_texts,
        backbone_fingerprint=parsed.backbone_fingerprint,
        concepts=tuple(c.score_() for c in parsed.concepts),
        control=parsed.control.score_(),
        n_controls=parsed.n_controls,
        direction_source=parsed.direction_source,
        notes=tuple(parsed.notes),
    )


def save_reliance(
    report: RelianceReport, folder: str | Path, settings: RelianceSettings
) -> StoredReliance:
    """Return the report as stored in ``folder``/reliance.json (written atomically)."""
    saved_at = datetime.now(UTC).isoformat(timespec="seconds")
    body = _RelianceFile.model_validate(
        {
            "schema_version": SCHEMA_VERSION,
            "saved_at": saved_at,
            "settings": asdict(settings),
            "report": report.as_dict(),
        }
    ).model_dump_json(indent=2)
    path = Path(folder) / RELIANCE_FILE
    atomic_write(path, lambda tmp: Path(tmp).write_text(body, encoding="utf-8"))
    logger.info("saved the reliance report of head %s to %s", report.head_id, path)
    return StoredReliance(report, settings, saved_at)


def load_reliance(folder: str | Path) -> StoredReliance | None:
    """Return the reliance report stored in ``folder``, or None if the head was never audited.

    A file that does not parse, or comes from a newer version, is an error naming it and the fix
    (audit the head again, which replaces it).
    """
    path = Path(folder) / RELIANCE_FILE
    if not path.is_file():
        return None
    try:
        parsed = _RelianceFile.model_validate_json(path.read_text(encoding="utf-8"))
    except (ValidationError, UnicodeDecodeError) as exc:
        raise RelianceError(
            f"{path} is not a readable reliance report ({str(exc).splitlines()[0]}); "
            "audit the head again to replace it."
        ) from exc
    if parsed.schema_version > SCHEMA_VERSION:
        raise RelianceError(
            f"{path} has schema_version {parsed.schema_version}; this version reads up to "
            f"{SCHEMA_VERSION}. Upgrade the package, or audit the head again to replace it."
        )
    settings = RelianceSettings(**parsed.settings.model_dump())
    return StoredReliance(_report(parsed.report), settings, parsed.saved_at)


def audit_and_save(
    service: TenantService,
    tenant_id: str,
    head_id: str,
    settings: RelianceSettings | None = None,
    *,
    progress: bool = False,
) -> StoredReliance:
    """Return the reliance audit of a tenant's ready head on its own corpus, stored with it.

    The same audit as ``audit tenant audit``: the head's training texts, erased concept by
    concept, next to the random control.
    """
    settings = settings or RelianceSettings()
    record = service.registry.get_head(tenant_id, head_id)
    if record is None or not record.path:
        raise NotFoundError(f"Tenant {tenant_id!r} has no ready head {head_id!r}.")
    if service.registry.get_corpus(tenant_id, record.corpus_id) is None:
        raise NotFoundError(
            f"Head {head_id} was trained on corpus {record.corpus_id}, which was deleted; audit "
            "it on other texts with `audit tenant audit TENANT HEAD --data FILE.jsonl`."
        )
    head = service.head(tenant_id, head_id)
    texts = service.read_corpus(tenant_id, record.corpus_id).texts
    report = audit_head(
        service.backbone,
        service.store,
        head,
        texts,
        concepts=settings.concepts,
        method=settings.method,
        max_texts=settings.max_texts,
        max_samples=settings.max_samples,
        n_controls=settings.n_controls,
        seed=settings.seed,
        progress=progress,
    )
    return save_reliance(report, record.path, settings)
