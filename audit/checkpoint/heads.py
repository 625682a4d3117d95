"""Tenant heads on a new checkpoint: each ready head's validation metric, baseline against new.

A head is normally refused on any backbone but the one it was trained on (its fingerprint).
Auditing a checkpoint before it is served is the one place a head is run on another backbone on
purpose: heads are loaded in the explicit cross-fingerprint mode, and every outcome says so
(``cross_fingerprint: true`` with both fingerprints in its details). Each head is scored on its
own validation split of its own corpus, the split training held out, so the baseline figure is
the one recorded at training and the drop is the checkpoint's doing.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from audit.checkpoint.outcome import CheckOutcome, Expectation
from audit.checkpoint.spec import AuditSpecError, HeadsSpec
from audit.errors import AuditError
from audit.tenants.heads import load_head, validation_metrics
from audit.tenants.registry import HeadRecord, Registry
from audit.tenants.service import parse_corpus
from probes.backbone import Backbone
from probes.errors import ProbesError

logger = logging.getLogger(__name__)


def head_metric(meta: dict[str, Any]) -> str:
    """Return the validation metric a head is audited on (AUROC, accuracy or R²)."""
    metrics = meta.get("metrics") or {}
    if meta.get("task") == "regression":
        return "val_r2"
    return "val_auroc" if "val_auroc" in metrics else "val_accuracy"


def head_outcomes(
    registry: Registry,
    backbone: Backbone,
    spec: HeadsSpec,
    baseline_fingerprint: str | None = None,
) -> list[CheckOutcome]:
    """Return one outcome per ready head: its validation metric's drop on ``backbone``.

    Heads of ``spec.tenants`` (default: every tenant) trained on ``baseline_fingerprint``
    (default: whatever backbone they were trained on) are scored; an empty list means there is
    no such head. Language-model heads and heads whose corpus was deleted are skipped outcomes;
    a head that cannot be loaded or scored fails with the reason in its details.
    """
    return [
        _head_outcome(registry, backbone, spec, record)
        for record in selected_heads(registry, spec, baseline_fingerprint)
    ]


def selected_heads(
    registry: Registry, spec: HeadsSpec, baseline_fingerprint: str | None = None
) -> list[HeadRecord]:
    """Return the ready heads the audit scores: of ``spec.tenants``, trained on the baseline."""
    if spec.tenants is not None:
        unknown = [t for t in spec.tenants if registry.get_tenant(t) is None]
        if unknown:
            raise AuditSpecError(
                f"heads.tenants names {unknown}, which the tenant registry {registry.path} does "
                "not hold. List tenants with `audit tenant list`, or leave heads.tenants out "
                "to audit every tenant's heads."
            )
        tenant_ids = list(spec.tenants)
    else:
        tenant_ids = [t.tenant_id for t in registry.list_tenants()]
    return [
        record
        for tenant_id in tenant_ids
        for record in registry.list_heads(tenant_id, include_unready=False)
        if baseline_fingerprint is None
        or record.meta.get("backbone_fingerprint") == baseline_fingerprint
    ]


def planned_head_ids(
    registry: Registry, spec: HeadsSpec, baseline_fingerprint: str | None = None
) -> list[str]:
    """Return the check ids ``head_outcomes`` gives, from the registry alone (nothing loaded)."""
    return [
        f"head[{r.tenant_id}/{r.head_id}]::{head_metric(r.meta)}"
        for r in selected_heads(registry, spec, baseline_fingerprint)
    ]


def _head_outcome(
    registry: Registry, backbone: Backbone, spec: HeadsSpec, record: HeadRecord
) -> CheckOutcome:
    metric = head_metric(record.meta)
    baseline = (record.meta.get("metrics") or {}).get(metric)
    details: dict[str, Any] = {
        "cross_fingerprint": True,
        "head_fingerprint": record.meta.get("backbone_fingerprint"),
        "checkpoint_fingerprint": backbone.fingerprint,
        "metric": metric,
        "baseline": baseline,
        "kind": record.kind,
        "corpus_id": record.corpus_id,
    }
    check_id = f"head[{record.tenant_id}/{record.head_id}]::{metric}"
    title = (
        f"tenant {record.tenant_id}'s head {record.head_id} keeps its validation {metric} on "
        "this checkpoint (baseline minus new)"
    )
    expected = Expectation("<=", spec.max_metric_drop)

    def skipped(reason: str) -> CheckOutcome:
        return CheckOutcome(check_id, title, expected, math.nan, details=details, skipped=reason)

    if record.meta.get("task") == "lm":
        return skipped("a language-model head has no labelled validation metric")
    corpus = registry.get_corpus(record.tenant_id, record.corpus_id)
    if corpus is None:
        return skipped(f"its corpus {record.corpus_id} was deleted; nothing to score it on")
    try:
        if not isinstance(baseline, int | float) or record.path is None:
            raise AuditError(f"the head's record holds no {metric} from training; retrain the head")
        data = Path(corpus.path).read_bytes()
        parsed = parse_corpus(data, labelled=True, max_bytes=len(data) + 1)
        head = load_head(record.path, backbone, allow_mismatch=True)
        metrics = validation_metrics(head, backbone, parsed.texts, parsed.labels or [])
    except (ProbesError, AuditError, OSError) as exc:
        logger.warning("head %s could not be scored on the checkpoint: %s", record.head_id, exc)
        return CheckOutcome(
            check_id, title, expected, math.nan, details={**details, "error": str(exc)}
        )
    new = float(metrics[metric])
    return CheckOutcome(
        check_id=check_id,
        title=title,
        expected=expected,
        measured=float(baseline) - new,
        n=int(metrics["n_val"]),
        details={**details, "new": new},
    )
