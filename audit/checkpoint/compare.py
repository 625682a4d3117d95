"""Checkpoint audit reports side by side: finding them, one row per check id, comparison plots.

``pytest --audit-checkpoint PATH`` leaves a ``reports/<UTC time>-audit-<spec name>/report.json``
per run. Here those files are found (probe and screen-eval reports beside them are passed over;
broken ones are kept aside with the reason), validated, and lined up check id by check id, so
two checkpoints (say the served one and a candidate) can be read against each other: what each
measured, against which bar, and which checks only one of them ran.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import plotly.graph_objects as go
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from audit.errors import AuditError

COLOURS = ("#1f77b4", "#ff7f0e")  # checkpoint A, checkpoint B
MISSING = "-"  # a check the other report did not run


class AuditReportError(AuditError):
    """A report.json that cannot be read as a checkpoint audit report; the message says why."""


class Expected(BaseModel):
    """The spec's bar for one check: measured ``comparison`` ``bound``."""

    model_config = ConfigDict(frozen=True)

    comparison: Literal[">=", "<="]
    bound: float

    def text(self) -> str:
        return f"{self.comparison} {self.bound:g}"


class CheckRow(BaseModel):
    """One check of a saved audit: its figure and verdict, or the error that kept it unmeasured."""

    model_config = ConfigDict(extra="allow", frozen=True)

    check_id: str
    passed: bool
    title: str = ""
    expected: Expected | None = None
    measured: float | None = None  # null when the figure was NaN or never measured
    low: float | None = None
    high: float | None = None
    n: int | None = None
    skipped: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None

    @property
    def result(self) -> str:
        """Return the verdict as the table shows it: pass, FAIL, skipped: why, or error: why."""
        if self.error is not None:
            return f"error: {self.error}"
        if self.skipped is not None:
            return f"skipped: {self.skipped}"
        return "pass" if self.passed else "FAIL"


class AuditReport(BaseModel):
    """The parts of a checkpoint audit's report.json this module reads (the rest is kept)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    schema_version: Literal[1]
    created_at: datetime
    checkpoint: str
    backbone: dict[str, Any] | None
    spec: dict[str, Any]
    mode: str  # "compare", or "update-baseline" when the run recorded the baseline
    baseline: dict[str, Any] = Field(default_factory=dict)  # folder, written, fingerprint
    passed: bool
    checks: list[CheckRow]
    errors: dict[str, str] = Field(default_factory=dict)

    @property
    def fingerprint(self) -> str | None:
        return None if self.backbone is None else str(self.backbone.get("fingerprint"))


@dataclass(frozen=True)
class CheckCounts:
    """How a report's checks came out."""

    passed: int
    failed: int
    skipped: int
    errors: int

    def text(self) -> str:
        return (
            f"{self.passed} passed, {self.failed} failed, {self.skipped} skipped, "
            f"{self.errors} not measured"
        )


@dataclass(frozen=True)
class AuditReportFile:
    """A checkpoint audit report and where it lies."""

    path: Path  # .../<UTC time>-audit-<spec name>/report.json
    report: AuditReport

    @property
    def run_name(self) -> str:
        return self.path.parent.name

    def counts(self) -> CheckCounts:
        """Return how many checks passed, failed, were skipped or could not be measured."""
        rows = self.report.checks
        errors = sum(r.error is not None for r in rows)
        skipped = sum(r.error is None and r.skipped is not None for r in rows)
        passed = sum(r.error is None and r.skipped is None and r.passed for r in rows)
        return CheckCounts(passed, len(rows) - errors - skipped - passed, skipped, errors)

    def label(self) -> str:
        """Return the one-line name of this run: checkpoint folder, fingerprint, time, verdict."""
        report = self.report
        fingerprint = (report.fingerprint or "not loaded")[:12]
        when = report.created_at.strftime("%Y-%m-%d %H:%M:%S UTC")
        verdict = "PASSED" if report.passed else "FAILED"
        recording = " (recording the baseline)" if report.mode == "update-baseline" else ""
        return f"{Path(report.checkpoint).name} · {fingerprint} · {when} · {verdict}{recording}"

    def verdict(self) -> str:
        """Return the verdict with its counts, e.g. 'PASSED: 7 passed, 0 failed, ...'."""
        return f"{'PASSED' if self.report.passed else 'FAILED'}: {self.counts().text()}"


@dataclass(frozen=True)
class SkippedReport:
    """A report.json that looked like it could be an audit report but could not be used."""

    path: Path
    reason: str


@dataclass(frozen=True)
class AuditReportListing:
    """The audit reports found under a folder (newest first) and the files passed over."""

    reports: list[AuditReportFile]
    skipped: list[SkippedReport]


def is_audit_report(data: object) -> bool:
    """Return whether parsed JSON is a checkpoint audit report rather than another kind."""
    return isinstance(data, dict) and "checkpoint" in data and "checks" in data


def _validation_reason(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "the report"
    more = exc.error_count() - 1
    return f"{where}: {first['msg']}" + (f" (and {more} more problems)" if more else "")


def read_audit_report(path: Path) -> AuditReportFile:
    """Return the checkpoint audit report saved at ``path``; raise AuditReportError if it is not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise AuditReportError(f"{path} cannot be read: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise AuditReportError(f"{path} is not valid JSON: {exc}") from None
    if not is_audit_report(data):
        raise AuditReportError(
            f"{path} is not a checkpoint audit report (no 'checkpoint' and 'checks'): "
            "`pytest --audit-checkpoint PATH` writes those."
        )
    try:
        return AuditReportFile(path, AuditReport.model_validate(data))
    except ValidationError as exc:
        raise AuditReportError(
            f"{path} is not a valid checkpoint audit report: {_validation_reason(exc)}"
        ) from None


def list_audit_reports(folder: Path) -> AuditReportListing:
    """Return the checkpoint audit reports under ``folder`` (one level down), newest first.

    Probe and screen-eval reports in the same folder are passed over without a word; a
    report.json that is not JSON, or an audit report that does not validate, is listed in
    ``skipped`` with the reason, so a reader can tell why a run is missing.
    """
    if not folder.is_dir():
        return AuditReportListing([], [])
    reports, skipped = [], []
    for path in sorted(folder.glob("*/report.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            skipped.append(SkippedReport(path, f"cannot be read: {exc.strerror or exc}"))
            continue
        except ValueError as exc:
            skipped.append(SkippedReport(path, f"not valid JSON: {exc}"))
            continue
        if not is_audit_report(data):
            continue
        try:
            reports.append(AuditReportFile(path, AuditReport.model_validate(data)))
        except ValidationError as exc:
            skipped.append(SkippedReport(path, _validation_reason(exc)))
    reports.sort(key=lambda r: (r.report.created_at, r.run_name), reverse=True)
    return AuditReportListing(reports, skipped)


# ---------------------------------------------------------------------- comparison rows


@dataclass(frozen=True)
class ComparedCheck:
    """One check id with its row in each report (None where that report did not run it)."""

    check_id: str
    a: CheckRow | None
    b: CheckRow | None

    @property
    def expected(self) -> Expected | None:
        """Return the bar to draw: A's, else B's (the table shows both when they differ)."""
        for row in (self.a, self.b):
            if row is not None and row.expected is not None:
                return row.expected
        return None

    def bar(self) -> str:
        bars = {
            side: row.expected.text()
            for side, row in (("A", self.a), ("B", self.b))
            if row is not None and row.expected is not None
        }
        if len(set(bars.values())) > 1:
            return "; ".join(f"{side} {text}" for side, text in bars.items())
        return next(iter(bars.values()), "")


def compare_checks(a: AuditReport, b: AuditReport | None = None) -> list[ComparedCheck]:
    """Return every check id of ``a`` (in its order), then those only ``b`` ran, side by side."""
    rows_a = {r.check_id: r for r in a.checks}
    rows_b = {} if b is None else {r.check_id: r for r in b.checks}
    ids = list(rows_a) + [i for i in rows_b if i not in rows_a]
    return [ComparedCheck(i, rows_a.get(i), rows_b.get(i)) for i in ids]


def _measured(row: CheckRow | None) -> str:
    if row is None or row.measured is None:
        return MISSING
    return f"{row.measured:.4f}"


def comparison_table(
    compared: Sequence[ComparedCheck], *, with_b: bool = True
) -> list[dict[str, str]]:
    """Return one table row per check: the bar, each side's measured figure and verdict, B - A.

    Figures are text to four decimals, and ``-`` where a side did not run the check (or has no
    figure), so a column never mixes numbers and dashes.
    """
    rows = []
    for c in compared:
        row = {
            "check": c.check_id,
            "bar": c.bar(),
            "A measured": _measured(c.a),
            "A result": MISSING if c.a is None else c.a.result,
        }
        if with_b:
            a = None if c.a is None else c.a.measured
            b = None if c.b is None else c.b.measured
            row["B measured"] = _measured(c.b)
            row["B result"] = MISSING if c.b is None else c.b.result
            row["B - A"] = MISSING if a is None or b is None else f"{b - a:+.4f}"
        rows.append(row)
    return rows


# ---------------------------------------------------------------------- plots


@dataclass(frozen=True)
class Panel:
    """A family of checks plotted together: which ids, and how the axis reads."""

    key: str
    title: str
    y_title: str
    pattern: re.Pattern[str]  # named groups name, layer, metric make the x label


_CONCEPT = r"\[(?P<name>[^\]]+)\]"
PANELS = {
    "presence": Panel(
        "presence",
        "Concept presence: held-out AUROC per layer",
        "AUROC",
        re.compile(rf"^concept{_CONCEPT}::presence@L(?P<layer>\d+)$"),
    ),
    "probe_drift": Panel(
        "probe_drift",
        "Baseline probe scored on the checkpoint: AUROC drop",
        "AUROC drop (baseline minus checkpoint)",
        re.compile(rf"^drift{_CONCEPT}::baseline_probe@L(?P<layer>\d+)$"),
    ),
    "direction": Panel(
        "direction",
        "Re-fitted probe direction against the baseline's",
        "cosine",
        re.compile(rf"^drift{_CONCEPT}::direction@L(?P<layer>\d+)$"),
    ),
    "screening": Panel(
        "screening",
        "Deployed screens at the block threshold",
        "share of requests blocked",
        re.compile(r"^screening::(?P<metric>recall_at_block|over_refusal)$"),
    ),
    "heads": Panel(
        "heads",
        "Tenant heads: validation metric drop",
        "metric drop (baseline minus checkpoint)",
        re.compile(rf"^head{_CONCEPT}::(?P<metric>.+)$"),
    ),
}


def panel_checks(
    compared: Sequence[ComparedCheck], panel: Panel
) -> list[tuple[str, ComparedCheck]]:
    """Return the checks ``panel`` plots, each with its x-axis label (e.g. 'sentiment L5')."""
    found = []
    for c in compared:
        match = panel.pattern.match(c.check_id)
        if match is None:
            continue
        parts = match.groupdict()
        label = " ".join(
            p
            for p in (
                parts.get("name"),
                f"L{parts['layer']}" if parts.get("layer") else None,
                (parts.get("metric") or "").replace("_", " ") or None,
            )
            if p
        )
        found.append((label, c))
    return found


def _bar_trace(labels: list[str], rows: list[CheckRow | None], name: str, colour: str) -> go.Bar:
    ys: list[float | None] = []
    above: list[float | None] = []  # None: no interval saved, so no error bar drawn
    below: list[float | None] = []
    hover: list[str] = []
    for row in rows:
        value = None if row is None else row.measured
        ys.append(value)
        if row is None or value is None or row.low is None or row.high is None:
            above.append(None)
            below.append(None)
        else:
            above.append(max(row.high - value, 0.0))
            below.append(max(value - row.low, 0.0))
        if row is None:
            hover.append("not in this report")
        else:
            interval = (
                f" [{row.low:.4f}, {row.high:.4f}]"
                if row.low is not None and row.high is not None
                else ""
            )
            shown = MISSING if value is None else f"{value:.4f}"
            counted = f" (n={row.n})" if row.n is not None else ""
            hover.append(f"{shown}{interval}{counted}: {row.result}")
    return go.Bar(
        x=labels,
        y=ys,
        name=name,
        marker_color=colour,
        error_y={
            "type": "data",
            "symmetric": False,
            "array": above,
            "arrayminus": below,
            "visible": any(v is not None for v in above),
        },
        hovertext=hover,
        hoverinfo="text+name",
    )


def comparison_figure(
    compared: Sequence[ComparedCheck], panel: Panel, names: Sequence[str]
) -> go.Figure | None:
    """Return ``panel``'s grouped bars, one colour per report, the spec's bar as a line per group.

    ``names`` holds one legend name per report compared (one name: the first report alone).
    Error bars are each figure's interval as the report saved it. None when no check matches.
    """
    checks = panel_checks(compared, panel)
    if not checks:
        return None
    labels = [label for label, _ in checks]
    fig = go.Figure()
    for side, (name, colour) in enumerate(zip(names, COLOURS, strict=False)):
        rows = [c.a if side == 0 else c.b for _, c in checks]
        fig.add_trace(_bar_trace(labels, rows, name, colour))
    bars_drawn = False
    for i, (_, c) in enumerate(checks):
        expected = c.expected
        if expected is None or math.isnan(expected.bound):
            continue
        # A short segment over each group: the screens' two rates have different bars.
        fig.add_shape(
            type="line",
            x0=i - 0.45,
            x1=i + 0.45,
            y0=expected.bound,
            y1=expected.bound,
            xref="x",
            yref="y",
            line={"color": "black", "width": 2, "dash": "dash"},
        )
        bars_drawn = True
    if bars_drawn:
        # Shapes have no legend entry: an empty trace names the dashed line.
        fig.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                mode="lines",
                name="spec's bar",
                line={"color": "black", "width": 2, "dash": "dash"},
            )
        )
    fig.update_layout(
        title=panel.title,
        barmode="group",
        yaxis_title=panel.y_title,
        template="plotly_white",
        height=380,
        margin={"l": 60, "r": 20, "t": 50, "b": 40},
        legend={"orientation": "h", "y": -0.15},
    )
    return fig
