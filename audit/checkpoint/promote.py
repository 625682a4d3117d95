"""``audit promote PATH``: re-bind probes, screens and heads to a checkpoint whose audit passed.

Every artifact is bound to the fingerprint of the backbone it was made on, and everything that
loads one refuses another fingerprint. Promotion is the one way across: it needs a passing
checkpoint audit (compare mode, against the baseline of what is served now) under the reports
folder, copies the served backbone's screen banks and probes to the checkpoint's fingerprint
(each copy names what it was promoted from), re-binds each ready tenant head in place, and
appends one line to ``<AUDIT_HOME>/promotions.jsonl``. Without a passing audit nothing moves.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from audit.checkpoint.compare import AuditReportFile, list_audit_reports
from audit.errors import AuditError
from probes.backbone import fingerprint_folder
from probes.home import audit_home

logger = logging.getLogger(__name__)
PROMOTIONS_FILE = "promotions.jsonl"


class PromotionError(AuditError):
    """A promotion refused: no passing audit, or nothing to promote from."""


@dataclass
class Promotion:
    """What one promotion re-bound, as logged."""

    checkpoint: str
    from_fingerprint: str
    to_fingerprint: str
    report: str
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    screens: list[dict[str, str]] = field(default_factory=list)  # old and new bank versions
    heads: list[str] = field(default_factory=list)  # "<tenant>/<head>"
    probes: int = 0
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def passing_report(reports_root: Path, fingerprint: str) -> AuditReportFile | None:
    """Return the newest passing compare-mode audit report of ``fingerprint``, if any."""
    for found in list_audit_reports(Path(reports_root)).reports:  # newest first
        report = found.report
        if (
            report.mode == "compare"
            and report.passed
            and report.fingerprint == fingerprint
            and report.baseline.get("fingerprint")
        ):
            return found
    return None


def _promote_screens(source: str, target: str, name: str, dry_run: bool) -> list[dict[str, str]]:
    from audit.screening.catalog import list_banks, save_to_catalog
    from audit.screening.storage import load_bank

    moved = []
    for entry in list_banks(source):
        bank = load_bank(entry.path, SimpleNamespace(fingerprint=source))
        promoted = replace(bank, fingerprint=target, backbone=name)
        if not dry_run:
            save_to_catalog(promoted)
        moved.append({"from": bank.version, "to": promoted.version})
    return moved


def _promote_probes(source: str, target: str, dry_run: bool) -> int:
    src_root, dst_root = audit_home() / "probes" / source, audit_home() / "probes" / target
    if not src_root.is_dir():
        return 0
    count = 0
    for meta_path in sorted(src_root.rglob("*.json")):
        tensors = meta_path.with_suffix(".safetensors")
        if not tensors.is_file():
            continue
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("fingerprint") != source:
            continue
        count += 1
        if dry_run:
            continue
        out = dst_root / meta_path.relative_to(src_root)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tensors, out.with_suffix(".safetensors"))
        meta.update(fingerprint=target, promoted_from=source)
        out.write_text(json.dumps(meta, indent=1))
    return count


def _promote_heads(source: str, target: str, name: str, dry_run: bool) -> list[str]:
    from audit.tenants.heads import META_FILE, HeadMeta
    from audit.tenants.registry import REGISTRY_FILENAME, Registry

    if not (audit_home() / REGISTRY_FILENAME).is_file():
        return []
    registry = Registry()
    moved = []
    try:
        for tenant in registry.list_tenants():
            for record in registry.list_heads(tenant.tenant_id, include_unready=False):
                if record.path is None or record.meta.get("backbone_fingerprint") != source:
                    continue
                moved.append(f"{tenant.tenant_id}/{record.head_id}")
                if dry_run:
                    continue
                meta_path = Path(record.path) / META_FILE
                meta = HeadMeta.model_validate_json(meta_path.read_text(encoding="utf-8"))
                spec = {**meta.spec, "promoted_from": source}
                rebound = meta.model_copy(
                    update={"backbone_fingerprint": target, "backbone_name": name, "spec": spec}
                )
                meta_path.write_text(rebound.model_dump_json(indent=2), encoding="utf-8")
                registry.mark_head_ready(
                    record.head_id,
                    path=record.path,
                    meta={**record.meta, "backbone_fingerprint": target, "backbone_name": name},
                )
    finally:
        registry.close()
    return moved


def _log(promotion: Promotion) -> Path:
    path = audit_home() / PROMOTIONS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(promotion.as_dict(), sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return path


def promote(
    checkpoint: str | Path, *, reports_root: str | Path = "reports", dry_run: bool = False
) -> Promotion:
    """Return what was re-bound to ``checkpoint`` after checking its audit passed."""
    folder = Path(checkpoint)
    if not folder.is_dir():
        raise PromotionError(f"Checkpoint {folder} is not a folder: give the model folder audited.")
    target = fingerprint_folder(folder)
    found = passing_report(Path(reports_root), target)
    if found is None:
        raise PromotionError(
            f"No passing audit of checkpoint {folder} (fingerprint {target}) under "
            f"{reports_root}: run `pytest --audit-checkpoint={folder}` against the served "
            "baseline first. Nothing was re-bound."
        )
    report = found.report
    source = str(report.baseline["fingerprint"])
    if source == target:
        raise PromotionError(
            f"Checkpoint {folder} has the served baseline's fingerprint {target}: "
            "everything is already bound to it."
        )
    name = str((report.backbone or {}).get("name") or folder.name)
    promotion = Promotion(
        checkpoint=str(folder.resolve()),
        from_fingerprint=source,
        to_fingerprint=target,
        report=str(found.path),
        dry_run=dry_run,
    )
    promotion.screens = _promote_screens(source, target, name, dry_run)
    promotion.probes = _promote_probes(source, target, dry_run)
    promotion.heads = _promote_heads(source, target, name, dry_run)
    if not dry_run:
        _log(promotion)
    logger.info("promoted %s -> %s: %s", source, target, promotion.as_dict())
    return promotion
