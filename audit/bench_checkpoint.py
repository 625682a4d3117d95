"""The time of a checkpoint audit (``audit bench --only checkpoint_audit``) against its goal.

The embedded backbone's baseline is recorded first (three concepts, the spec's default sample
size, selectivity and hook parity), then the same checkpoint is audited against it from an empty
activation store, as a new checkpoint would be: every forward, probe fit, scorecard check and
drift comparison counts. The goal is two minutes on two CPU cores.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

GOAL_SECONDS = 120.0
CONCEPT_LAYERS = {"sentiment": [3, 4, 5], "truth": [3, 4, 5], "toxicity": [3, 4, 5]}


def audit_spec_text(n_samples: int) -> str:
    """Return the benchmark's spec: three concepts at ``n_samples`` texts each, parity on."""
    lines = ["schema_version = 1", 'name = "bench"', f"n_samples = {n_samples}"]
    for concept, layers in CONCEPT_LAYERS.items():
        lines += [f"[concepts.{concept}]", f"layers = {layers}", "min_auroc = 0.5"]
    return "\n".join(lines) + "\n"


def _run(checkpoint: Path, folder: Path, *, update: bool, store: Path) -> tuple[float, Any]:
    from audit.checkpoint.runner import CheckpointAudit
    from audit.checkpoint.spec import load_spec

    started = time.perf_counter()
    audit = CheckpointAudit(
        checkpoint=checkpoint,
        spec=load_spec(folder / "audit.toml"),
        spec_path=folder / "audit.toml",
        baseline_dir=folder / "audit.baseline",
        update_baseline=update,
        store_root=store,
    )
    plan = audit.plan()
    outcomes = [audit.outcome(p) for p in plan]
    run_dir = folder / "reports" / ("baseline" if update else "audit")
    run_dir.mkdir(parents=True)
    audit.finish(plan, run_dir)
    return time.perf_counter() - started, (audit, outcomes)


def bench_checkpoint_audit(ctx: Any) -> list[Any]:
    """Time a three-concept audit of the default backbone against its recorded baseline."""
    from audit.bench import Figure
    from audit.checkpoint.spec import AuditSpec

    folder_of = getattr(ctx.backbone, "folder", None)
    if folder_of is None:
        return []  # only a local model folder can be audited as a checkpoint
    n_samples = 80 if ctx.quick else int(AuditSpec.model_fields["n_samples"].default)
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
        folder = Path(tmp)
        (folder / "audit.toml").write_text(audit_spec_text(n_samples))
        _run(Path(folder_of), folder, update=True, store=folder / "store-baseline")
        seconds, (audit, outcomes) = _run(
            Path(folder_of), folder, update=False, store=folder / "store-audit"
        )
    notes = {
        "concepts": list(CONCEPT_LAYERS),
        "n_samples": n_samples,
        "checks": len(outcomes),
        "failed": [o.check_id for o in outcomes if not o.passed and not o.skipped],
        "group_seconds": {g: round(s, 2) for g, s in audit._group_seconds.items()},
        "store": "empty at the start (every activation extracted)",
    }
    return [
        Figure(
            benchmark="checkpoint_audit",
            name="audit of the default backbone against its baseline, 3 concepts (s)",
            unit="s",
            ours=seconds,
            baseline=GOAL_SECONDS,
            baseline_name="goal: 120 s",
            goal=1.0,
            notes=notes,
            higher_is_better=False,
        )
    ]
