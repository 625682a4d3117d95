"""Checkpoints page: two checkpoint audit reports side by side, check by check.

Reads the reports ``pytest --audit-checkpoint PATH`` writes under the reports folder; nothing
here measures a figure.
"""

from __future__ import annotations

import streamlit as st

from app_pages.common import friendly_errors, reports_root
from audit.checkpoint.compare import (
    PANELS,
    AuditReportFile,
    ComparedCheck,
    compare_checks,
    comparison_figure,
    comparison_table,
    list_audit_reports,
)


def show_verdict(side: str, run: AuditReportFile) -> None:
    """Show one report's verdict (green or red) and what it audited."""
    report = run.report
    shown = st.success if report.passed else st.error
    shown(f"**{side}: {run.label()}**  \n{run.verdict()}")
    spec = report.spec
    st.caption(
        f"Checkpoint `{report.checkpoint}`; spec {spec.get('name')} (digest "
        f"{spec.get('digest')}); mode {report.mode}; report folder {run.run_name}"
    )
    for group, reason in report.errors.items():
        st.caption(f"Could not measure {group}: {reason}")


def show_panel(compared: list[ComparedCheck], key: str, names: list[str], missing: str) -> None:
    """Draw one panel's chart, or say in a caption why these reports have nothing for it."""
    figure = comparison_figure(compared, PANELS[key], names)
    if figure is None:
        st.caption(missing)
    else:
        st.plotly_chart(figure, key=f"chart-{key}")


st.title("Checkpoints")
folder = reports_root()
with friendly_errors("Listing the checkpoint audit reports"):
    listing = list_audit_reports(folder)
if listing.skipped:
    st.caption(
        f"Skipped {len(listing.skipped)} unreadable report(s): "
        + "; ".join(f"{s.path.parent.name}/report.json ({s.reason})" for s in listing.skipped)
    )
if not listing.reports:
    st.info(
        f"No checkpoint audit reports under {folder} yet. `pytest --audit-checkpoint=PATH` audits "
        "a checkpoint against the spec (audit.toml) and writes one there (README section "
        '"Auditing a new checkpoint"). Audit two checkpoints to compare them side by side; a '
        "single report is shown alone, without comparison."
    )
    st.stop()

runs = {str(r.path): r for r in listing.reports}
paths = list(runs)
if len(paths) == 1:
    a, b = listing.reports[0], None
    st.caption("Only one checkpoint audit report so far: it is shown alone, without comparison.")
else:
    left, right = st.columns(2)
    # Newest as B (the candidate), the one before it as A (what it is compared with).
    path_a = left.selectbox(
        "Checkpoint A", paths, index=1, format_func=lambda p: runs[p].label(), key="checkpoint_a"
    )
    path_b = right.selectbox(
        "Checkpoint B", paths, index=0, format_func=lambda p: runs[p].label(), key="checkpoint_b"
    )
    a, b = runs[path_a], runs[path_b]
    if path_a == path_b:
        st.warning("A and B are the same report: pick another to compare; it is shown alone.")
        b = None

sides = [("A", a)] + ([("B", b)] if b is not None else [])
for column, (side, run) in zip(st.columns(len(sides)), sides, strict=True):
    with column:
        show_verdict(side, run)
if b is not None and a.report.spec.get("digest") != b.report.spec.get("digest"):
    st.warning(
        "The two reports were audited against different specs (digest "
        f"{a.report.spec.get('digest')} against {b.report.spec.get('digest')}): their bars may "
        "differ; the table names both where they do."
    )

compared = compare_checks(a.report, None if b is None else b.report)
names = [f"{side}: {run.label()}" for side, run in sides]

st.subheader("Concept presence")
show_panel(compared, "presence", names, "No concept presence checks in these reports.")

st.subheader("Probe drift")
st.caption(
    "The baseline's probe scored on each checkpoint (AUROC drop) and the probe re-fitted there "
    "against the baseline's direction (cosine); the dashed line is the spec's bar."
)
drop_column, direction_column = st.columns(2)
missing_drift = (
    "No drift checks: a run that records the baseline (--audit-update-baseline) measures none."
)
with drop_column:
    show_panel(compared, "probe_drift", names, missing_drift)
with direction_column:
    show_panel(compared, "direction", names, missing_drift)

st.subheader("Screening")
show_panel(
    compared,
    "screening",
    names,
    "No screening checks in these reports (the spec has no [screening] section).",
)

st.subheader("Tenant heads")
show_panel(
    compared,
    "heads",
    names,
    "No tenant head checks in these reports (the spec has no [heads] section, or no compare "
    "run measured them).",
)

st.subheader("Parity")
parity = [c for c in compared if c.check_id.startswith("parity::")]
if parity:
    st.dataframe(comparison_table(parity, with_b=b is not None), hide_index=True, key="parity")
else:
    st.caption("No parity checks in these reports (the spec's [parity] is disabled).")

st.subheader("Every check")
st.caption("'-' marks a check the other report did not run, or a figure that was not measured.")
st.dataframe(comparison_table(compared, with_b=b is not None), hide_index=True, key="checks")
