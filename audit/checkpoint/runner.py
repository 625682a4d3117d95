"""One checkpoint audit: plan the checks from the spec, measure them lazily, write the report.

The pytest plugin asks for the plan at collection (check ids only: the checkpoint's config is
read, its weights are not loaded) and for each check's outcome when its test runs; checks that
share work (a concept's probes, the screens' pass over held-out requests) are measured once.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from audit.checkpoint.outcome import CheckOutcome
from audit.checkpoint.spec import AuditSpec, spec_digest
from audit.errors import AuditError
from probes.errors import ProbesError

logger = logging.getLogger(__name__)
REPORT_SCHEMA_VERSION = 1


class CheckpointError(AuditError):
    """The checkpoint cannot be audited (missing, unreadable, or not a model folder)."""


def checkpoint_config(path: Path) -> tuple[str | None, int]:
    """Return the model type and block count a local HF checkpoint declares, unloaded."""
    config = path / "config.json"
    if not path.is_dir():
        raise CheckpointError(
            f"Checkpoint {path} is not a folder: give a local Hugging Face model folder "
            "(config.json, weights in safetensors, tokenizer files)."
        )
    try:
        values = json.loads(config.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(
            f"Checkpoint {path} has no config.json: is it a Hugging Face model folder?"
        ) from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"Checkpoint config {config} is unreadable: {exc}") from None
    model_type = values.get("model_type")
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(values.get(key), int):
            return (str(model_type) if model_type else None), int(values[key])
    raise CheckpointError(f"Checkpoint config {config} names no layer count (num_hidden_layers).")


@dataclass
class PlannedCheck:
    """A check known at collection: its id and the group that measures it."""

    check_id: str
    group: str


@dataclass
class CheckpointAudit:
    """The audit of one checkpoint against one spec (and a baseline, unless recording one)."""

    checkpoint: Path
    spec: AuditSpec
    spec_path: Path
    baseline_dir: Path
    update_baseline: bool = False
    progress: bool = False
    store_root: Path | None = None  # activation store (default: AUDIT_HOME's)
    outcomes: dict[str, CheckOutcome] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # group -> why it could not run
    _backbone: Any = None
    _baseline: Any = None
    _concept_runs: dict[str, Any] = field(default_factory=dict)
    _screening_figures: dict[str, Any] | None = None
    _head_figures: dict[str, dict[str, Any]] = field(default_factory=dict)
    _started: float = field(default_factory=time.perf_counter)
    _group_seconds: dict[str, float] = field(default_factory=dict)

    # ------------------------------------------------------------------ plan
    def plan(self) -> list[PlannedCheck]:
        """Return every check this audit runs, in order, without loading the checkpoint."""
        model_type, n_layers = checkpoint_config(self.checkpoint)
        if not self.update_baseline:
            self.baseline()  # a missing or mismatched baseline stops the audit before any model loads
        planned: list[PlannedCheck] = []
        if self.spec.parity.enabled:
            from audit.checkpoint.parity import planned_parity_ids

            ids = planned_parity_ids(model_type, n_layers)
            planned += [PlannedCheck(i, "parity") for i in ids]
        compare = not self.update_baseline
        for name, concept in self.spec.concepts.items():
            group = f"concept:{name}"
            planned += [
                PlannedCheck(f"concept[{name}]::presence@L{la}", group) for la in concept.layers
            ]
            planned += [
                PlannedCheck(f"concept[{name}]::scorecard::{c}", group) for c in concept.scorecard
            ]
            if compare:
                for layer in concept.layers:
                    planned.append(PlannedCheck(f"drift[{name}]::baseline_probe@L{layer}", group))
                    planned.append(PlannedCheck(f"drift[{name}]::direction@L{layer}", group))
        if self.spec.screening is not None:
            planned += [
                PlannedCheck("screening::recall_at_block", "screening"),
                PlannedCheck("screening::over_refusal", "screening"),
            ]
        if self.spec.heads is not None and compare:
            planned += [PlannedCheck(i, "heads") for i in self._planned_head_ids()]
        return planned

    def _planned_head_ids(self) -> list[str]:
        from audit.checkpoint.heads import planned_head_ids

        assert self.spec.heads is not None
        with self._registry() as registry:
            return planned_head_ids(registry, self.spec.heads, self.baseline().fingerprint)

    @contextmanager
    def _registry(self) -> Iterator[Any]:
        from audit.tenants.registry import Registry

        registry = Registry()
        try:
            yield registry
        finally:
            registry.close()

    # ------------------------------------------------------------------ loading
    def backbone(self) -> Any:
        """Return the checkpoint booted as a backbone (once)."""
        if self._backbone is None:
            from probes.backbone import Backbone

            self._backbone = Backbone.load(str(self.checkpoint))
        return self._backbone

    def baseline(self) -> Any:
        """Return the baseline this audit compares with (loaded once)."""
        if self._baseline is None:
            from audit.checkpoint.baseline import load_baseline

            self._baseline = load_baseline(self.baseline_dir, self.spec)
        return self._baseline

    def reference_fingerprint(self) -> str:
        """Return the fingerprint of what is served today: the baseline's, or (recording) ours."""
        return self.backbone().fingerprint if self.update_baseline else self.baseline().fingerprint

    # ------------------------------------------------------------------ measuring
    def outcome(self, planned: PlannedCheck) -> CheckOutcome:
        """Return one check's outcome, measuring its group first if needed."""
        if planned.check_id not in self.outcomes and planned.group not in self.errors:
            started = time.perf_counter()
            try:
                for outcome in self._measure(planned.group):
                    self.outcomes[outcome.check_id] = outcome
            except Exception as exc:
                # Named in every test of the group, and in the report; a library error is one
                # clear line, anything else keeps its type.
                known = isinstance(
                    exc, AuditError | ProbesError | ValueError | LookupError | OSError
                )
                self.errors[planned.group] = str(exc) if known else f"{type(exc).__name__}: {exc}"
                if known:
                    logger.warning("checkpoint audit group %s: %s", planned.group, exc)
                else:
                    logger.exception("checkpoint audit group %s failed", planned.group)
            finally:
                self._group_seconds[planned.group] = time.perf_counter() - started
        if planned.group in self.errors and planned.check_id not in self.outcomes:
            raise CheckpointError(self.errors[planned.group])
        try:
            return self.outcomes[planned.check_id]
        except KeyError:
            raise CheckpointError(
                f"{planned.check_id} was planned but its group {planned.group!r} did not "
                "measure it."
            ) from None

    def _measure(self, group: str) -> list[CheckOutcome]:
        kind, _, name = group.partition(":")
        measure: dict[str, Callable[[], list[CheckOutcome]]] = {
            "parity": self._parity,
            "concept": lambda: self._concept(name),
            "screening": self._screening,
            "heads": self._heads,
        }
        return measure[kind]()

    def _parity(self) -> list[CheckOutcome]:
        from audit.checkpoint.parity import parity_outcomes

        return parity_outcomes(self.backbone(), self.spec.parity)

    def _concept(self, name: str) -> list[CheckOutcome]:
        from audit.checkpoint.concepts import (
            drift_outcomes,
            measure_concept,
            presence_outcomes,
            scorecard_outcomes,
        )
        from probes.store import ActivationStore

        store = ActivationStore(self.store_root)
        run = measure_concept(self.backbone(), self.spec, name, store=store, progress=self.progress)
        self._concept_runs[name] = run
        out = presence_outcomes(run, self.spec) + scorecard_outcomes(run)
        if not self.update_baseline:
            baseline = self.baseline()
            out += drift_outcomes(
                run,
                self.spec,
                baseline.concept_probes(name),
                baseline.concept_auroc(name),
                seed=self.spec.seed,
            )
        return out

    def _screening(self) -> list[CheckOutcome]:
        from audit.checkpoint.screening import screening_outcomes
        from audit.screening.catalog import list_banks
        from audit.screening.storage import load_bank

        assert self.spec.screening is not None
        fingerprint = self.reference_fingerprint()
        entries = [
            e for e in list_banks(fingerprint) if self.spec.screening.version in (None, e.version)
        ]
        if not entries:
            wanted = self.spec.screening.version or "any version"
            raise CheckpointError(
                f"No deployed screen bank ({wanted}) for the served backbone "
                f"{fingerprint[:12]}: fit one with `audit screen fit` on it, or drop [screening] "
                "from the spec."
            )
        bank = load_bank(entries[0].path, self.backbone(), allow_fingerprint_mismatch=True)
        outcomes = screening_outcomes(
            self.backbone(), bank, self.spec.screening, seed=self.spec.seed, progress=self.progress
        )
        self._screening_figures = {
            "bank": bank.version,
            "bank_fingerprint": bank.fingerprint,
            **{o.check_id.split("::")[1]: o.measured for o in outcomes},
        }
        return outcomes

    def _heads(self) -> list[CheckOutcome]:
        from audit.checkpoint.heads import head_outcomes

        assert self.spec.heads is not None
        with self._registry() as registry:
            return head_outcomes(
                registry, self.backbone(), self.spec.heads, self.baseline().fingerprint
            )

    # ------------------------------------------------------------------ finishing
    def finish(self, planned: list[PlannedCheck], run_dir: Path) -> Path:
        """Write report.json and report.md into ``run_dir`` (and the baseline when recording)."""
        from audit.report import package_versions

        baseline_path = None
        if self.update_baseline and self._backbone is not None and not self.errors:
            from audit.checkpoint.baseline import save_baseline

            baseline_path = save_baseline(
                self.baseline_dir,
                spec=self.spec,
                backbone=self.backbone(),
                concepts=self._concept_runs,
                screening=self._screening_figures,
            )
        rows = []
        for p in planned:
            outcome = self.outcomes.get(p.check_id)
            if outcome is not None:
                rows.append(outcome.as_dict())
            else:
                reason = self.errors.get(p.group, "not run (deselected or interrupted)")
                rows.append({"check_id": p.check_id, "passed": False, "error": reason})
        backbone = self._backbone
        report = {
            "schema_version": REPORT_SCHEMA_VERSION,
            "created_at": datetime.now(UTC).isoformat(),
            "checkpoint": str(self.checkpoint),
            "backbone": None if backbone is None else backbone.info(),
            "spec": {
                "path": str(self.spec_path),
                "digest": spec_digest(self.spec),
                **self.spec.model_dump(mode="json"),
            },
            "mode": "update-baseline" if self.update_baseline else "compare",
            "baseline": {
                "folder": str(self.baseline_dir),
                "written": None if baseline_path is None else str(baseline_path),
                "fingerprint": None if self._baseline is None else self._baseline.fingerprint,
            },
            "passed": all(r.get("passed") or r.get("skipped") for r in rows) and bool(rows),
            "checks": rows,
            "errors": self.errors,
            "seconds": {
                "total": round(time.perf_counter() - self._started, 2),
                **{g: round(s, 2) for g, s in self._group_seconds.items()},
            },
            "versions": package_versions(),
        }
        (run_dir / "report.json").write_text(json.dumps(report, indent=1) + "\n")
        (run_dir / "report.md").write_text(render_markdown(report))
        return run_dir


def render_markdown(report: dict[str, Any]) -> str:
    """Return the audit report as markdown: verdict, then one row per check."""
    backbone = report.get("backbone") or {}
    lines = [
        f"# Checkpoint audit: {report['spec']['name']}",
        "",
        f"- checkpoint: `{report['checkpoint']}` (fingerprint "
        f"`{str(backbone.get('fingerprint', '?'))[:16]}`)",
        f"- mode: {report['mode']}; baseline: `{report['baseline']['folder']}`",
        f"- verdict: **{'PASSED' if report['passed'] else 'FAILED'}** "
        f"in {report['seconds']['total']} s",
        "",
        "| check | expected | measured | interval | n | result |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["checks"]:
        if "error" in row:
            lines.append(f"| {row['check_id']} | | | | | error: {row['error']} |")
            continue
        expected = f"{row['expected']['comparison']} {row['expected']['bound']:g}"
        measured = "-" if row["measured"] is None else f"{row['measured']:.4f}"
        interval = (
            f"[{row['low']:.4f}, {row['high']:.4f}]"
            if row["low"] is not None and row["high"] is not None
            else ""
        )
        result = (
            f"skipped: {row['skipped']}" if row["skipped"] else "pass" if row["passed"] else "FAIL"
        )
        lines.append(
            f"| {row['check_id']} | {expected} | {measured} | {interval} | {row['n'] or ''} | "
            f"{result} |"
        )
    return "\n".join(lines) + "\n"
