"""Reading checkpoint audit reports side by side, on reports of real audits of MiniLM."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from audit.checkpoint.compare import (
    MISSING,
    PANELS,
    AuditReport,
    AuditReportError,
    compare_checks,
    comparison_figure,
    comparison_table,
    list_audit_reports,
    panel_checks,
    read_audit_report,
)
from audit.checkpoint.runner import CheckpointAudit
from audit.checkpoint.spec import load_spec
from audit.report import new_run_dir
from probes.bundled import minilm_folder

SPEC = """\
schema_version = 1
name = "minilm"
n_samples = 120

[concepts.sentiment]
layers = [4, 5]

[parity]
enabled = false
"""


def build_audit_reports(root: Path) -> Path:
    """Return a reports folder holding two real audits of MiniLM: the baseline run, then a compare.

    The first run records the baseline (presence and scorecard checks only); the second
    compares MiniLM with it (drift checks too). Built once per folder: both test modules of the
    page and the library call this with the same session folder.
    """
    reports = root / "reports"
    if (root / "built").exists():
        return reports
    root.mkdir(parents=True, exist_ok=True)
    spec_path = root / "audit.toml"
    spec_path.write_text(SPEC)
    spec = load_spec(spec_path)
    for update_baseline in (True, False):
        audit = CheckpointAudit(
            checkpoint=minilm_folder(),
            spec=spec,
            spec_path=spec_path,
            baseline_dir=root / "minilm.baseline",
            update_baseline=update_baseline,
        )
        plan = audit.plan()
        for planned in plan:
            audit.outcome(planned)
        audit.finish(plan, new_run_dir(reports, f"audit-{spec.name}"))
    (root / "built").write_text("ok")
    return reports


def candidate_copy(reports: Path, source: Path) -> Path:
    """Return a third report: a copy of ``source`` with one drift figure edited to fail.

    Not a real audit: a real second checkpoint that drifts would take a fine-tuning run. Only
    the edited direction cosine (and the verdicts it changes) differ from the real report.
    """
    report = json.loads(source.read_text())
    report["checkpoint"] = str(Path(report["checkpoint"]).with_name("candidate"))
    report["created_at"] = "2099-01-01T00:00:00+00:00"
    row = next(
        r for r in report["checks"] if r["check_id"].startswith("drift[sentiment]::direction")
    )
    row["measured"], row["passed"] = 0.25, False
    report["passed"] = False
    run = reports / "20990101T000000Z-audit-minilm"
    run.mkdir()
    (run / "report.json").write_text(json.dumps(report))
    return run / "report.json"


@pytest.fixture(scope="session")
def audit_reports(tmp_path_factory) -> Path:
    return build_audit_reports(tmp_path_factory.getbasetemp() / "checkpoint-audits")


@pytest.fixture
def reports(audit_reports, tmp_path) -> Path:
    """Return a private copy of the two real reports (tests add files beside them)."""
    return Path(shutil.copytree(audit_reports, tmp_path / "reports"))


def test_lists_audit_reports_newest_first(reports) -> None:
    listing = list_audit_reports(reports)
    assert listing.skipped == []
    assert [r.report.mode for r in listing.reports] == ["compare", "update-baseline"]
    newest, oldest = listing.reports
    assert newest.report.created_at > oldest.report.created_at
    saved = json.loads(newest.path.read_text())
    assert newest.report.passed is saved["passed"]
    assert newest.report.fingerprint == saved["backbone"]["fingerprint"]
    counts = newest.counts()
    assert counts.passed + counts.failed + counts.skipped + counts.errors == len(saved["checks"])
    assert counts.passed == sum(r["passed"] for r in saved["checks"])
    label = newest.label()
    assert saved["backbone"]["fingerprint"][:12] in label
    assert ("PASSED" if saved["passed"] else "FAILED") in label
    assert "recording the baseline" in oldest.label()


def test_other_reports_are_passed_over_and_broken_ones_named(reports) -> None:
    probe = reports / "20200101T000000Z-toxicity"
    probe.mkdir()
    shutil.copy(Path(__file__).resolve().parents[3] / "reports/example/report.json", probe)
    broken = reports / "20200101T000000Z-audit-broken"
    broken.mkdir()
    (broken / "report.json").write_text('{"checkpoint": "x", "checks": [')
    invalid = reports / "20200101T000000Z-audit-invalid"
    invalid.mkdir()
    (invalid / "report.json").write_text(json.dumps({"checkpoint": "x", "checks": "none"}))
    listing = list_audit_reports(reports)
    assert len(listing.reports) == 2
    reasons = {s.path.parent.name: s.reason for s in listing.skipped}
    assert set(reasons) == {broken.name, invalid.name}
    assert "not valid JSON" in reasons[broken.name]
    assert "schema_version" in reasons[invalid.name]
    with pytest.raises(AuditReportError, match="not a checkpoint audit report"):
        read_audit_report(probe / "report.json")
    with pytest.raises(AuditReportError, match="not valid JSON"):
        read_audit_report(broken / "report.json")


def test_missing_folder_lists_nothing(tmp_path) -> None:
    listing = list_audit_reports(tmp_path / "absent")
    assert listing.reports == [] and listing.skipped == []


def test_comparison_rows_line_up_every_check_id(reports) -> None:
    newest, oldest = list_audit_reports(reports).reports
    compared = compare_checks(oldest.report, newest.report)
    ids_a = [r.check_id for r in oldest.report.checks]
    ids_b = [r.check_id for r in newest.report.checks]
    assert [c.check_id for c in compared] == ids_a + [i for i in ids_b if i not in ids_a]
    assert any(i.startswith("drift[") for i in ids_b) and not any(
        i.startswith("drift[") for i in ids_a
    )
    table = {row["check"]: row for row in comparison_table(compared)}
    saved_a = {r["check_id"]: r for r in json.loads(oldest.path.read_text())["checks"]}
    saved_b = {r["check_id"]: r for r in json.loads(newest.path.read_text())["checks"]}
    for check_id, row in table.items():
        for side, saved in (("A", saved_a), ("B", saved_b)):
            if check_id in saved:
                assert row[f"{side} measured"] == f"{saved[check_id]['measured']:.4f}"
                expected = saved[check_id]["expected"]
                assert row["bar"] == f"{expected['comparison']} {expected['bound']:g}"
            else:  # only the other report ran it
                assert row[f"{side} measured"] == MISSING
                assert row[f"{side} result"] == MISSING
                assert row["B - A"] == MISSING
    # The same checkpoint audited twice with the same seed measures the same presence.
    presence = table["concept[sentiment]::presence@L5"]
    assert presence["A measured"] == presence["B measured"]
    assert presence["B - A"] in {"+0.0000", "-0.0000"}


def test_a_report_alone_has_no_b_columns(reports) -> None:
    newest = list_audit_reports(reports).reports[0]
    rows = comparison_table(compare_checks(newest.report), with_b=False)
    assert [r["check"] for r in rows] == [c.check_id for c in newest.report.checks]
    assert all(set(r) == {"check", "bar", "A measured", "A result"} for r in rows)


def test_figures_plot_each_side_with_intervals_and_bars(reports) -> None:
    newest, oldest = list_audit_reports(reports).reports
    candidate = read_audit_report(candidate_copy(reports, newest.path))
    compared = compare_checks(newest.report, candidate.report)
    presence = comparison_figure(compared, PANELS["presence"], ["A", "B"])
    assert presence is not None
    bars = [t for t in presence.data if t.type == "bar"]
    assert [list(t.x) for t in bars] == [["sentiment L4", "sentiment L5"]] * 2
    saved = {r["check_id"]: r for r in json.loads(newest.path.read_text())["checks"]}
    l4 = saved["concept[sentiment]::presence@L4"]
    assert bars[0].y[0] == l4["measured"]
    assert bars[0].error_y.array[0] == pytest.approx(l4["high"] - l4["measured"])
    assert bars[0].error_y.arrayminus[0] == pytest.approx(l4["measured"] - l4["low"])
    assert [s.y0 for s in presence.layout.shapes] == [l4["expected"]["bound"]] * 2

    direction = comparison_figure(compared, PANELS["direction"], ["A", "B"])
    assert direction is not None
    b_bars = [t for t in direction.data if t.type == "bar"][1]
    assert 0.25 in list(b_bars.y)  # the edited figure of the candidate copy
    assert comparison_figure(compared, PANELS["screening"], ["A", "B"]) is None
    assert comparison_figure(compared, PANELS["heads"], ["A", "B"]) is None
    # One report alone: one set of bars.
    alone = comparison_figure(compare_checks(oldest.report), PANELS["presence"], ["A"])
    assert alone is not None and len([t for t in alone.data if t.type == "bar"]) == 1


def test_panels_pick_their_check_ids() -> None:
    # Ids only (no figures): which panel plots which check, and the x label it gets.
    ids = [
        "parity::hidden_states@L3",
        "concept[refusal]::presence@L12",
        "concept[refusal]::scorecard::selectivity",
        "drift[refusal]::baseline_probe@L12",
        "drift[refusal]::direction@L12",
        "screening::recall_at_block",
        "screening::over_refusal",
        "head[acme/toxicity]::auroc",
    ]
    report = AuditReport.model_validate(
        {
            "schema_version": 1,
            "created_at": "2026-01-01T00:00:00+00:00",
            "checkpoint": "ckpt",
            "backbone": None,
            "spec": {},
            "mode": "compare",
            "passed": False,
            "checks": [{"check_id": i, "passed": False, "error": "not run"} for i in ids],
        }
    )
    compared = compare_checks(report)
    labels = {
        key: [(label, c.check_id) for label, c in panel_checks(compared, panel)]
        for key, panel in PANELS.items()
    }
    assert labels == {
        "presence": [("refusal L12", ids[1])],
        "probe_drift": [("refusal L12", ids[3])],
        "direction": [("refusal L12", ids[4])],
        "screening": [("recall at block", ids[5]), ("over refusal", ids[6])],
        "heads": [("acme/toxicity auroc", ids[7])],
    }
    # Unmeasured checks still get a row, and no bar to draw.
    rows = comparison_table(compared, with_b=False)
    assert rows[0] == {
        "check": ids[0],
        "bar": "",
        "A measured": MISSING,
        "A result": "error: not run",
    }
