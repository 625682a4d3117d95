"""The checkpoints page: empty state, two real audit reports side by side, one alone, a broken one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.audit.checkpoint.test_compare import build_audit_reports, candidate_copy


@pytest.fixture(scope="session")
def audit_reports(tmp_path_factory) -> Path:
    return build_audit_reports(tmp_path_factory.getbasetemp() / "checkpoint-audits")


def copy_runs(audit_reports: Path, reports_dir: Path, *, only_newest: bool = False) -> list[Path]:
    """Copy the real runs into the app's reports folder; return their report.json, newest first."""
    runs = sorted(audit_reports.iterdir(), reverse=True)[: 1 if only_newest else None]
    for run in runs:
        shutil.copytree(run, reports_dir / run.name)
    saved = [reports_dir / run.name / "report.json" for run in runs]
    return sorted(saved, key=lambda p: json.loads(p.read_text())["created_at"], reverse=True)


def verdicts(app) -> list[str]:
    return [e.value for e in app.success] + [e.value for e in app.error]


def every_check(app) -> dict[str, dict[str, str]]:
    """Return the combined table (the page's last), row by check id."""
    frame = app.dataframe[-1].value
    return {row["check"]: row for row in frame.to_dict("records")}


def test_empty_reports_folder_explains_what_to_do(open_page) -> None:
    app = open_page("checkpoints")
    assert not app.exception
    assert app.title[0].value == "Checkpoints"
    assert "pytest --audit-checkpoint" in app.info[0].value
    assert "Auditing a new checkpoint" in app.info[0].value


def test_two_reports_side_by_side(audit_reports, reports_dir, open_page) -> None:
    newest, older = copy_runs(audit_reports, reports_dir)
    app = open_page("checkpoints")
    assert not app.exception
    # B defaults to the newest run, A to the one before it.
    assert [s.value for s in app.selectbox] == [str(older), str(newest)]
    saved = {"A": json.loads(older.read_text()), "B": json.loads(newest.read_text())}
    shown = verdicts(app)
    assert len(shown) == 2
    for side, report in saved.items():
        (text,) = [v for v in shown if v.startswith(f"**{side}: ")]
        verdict = "PASSED" if report["passed"] else "FAILED"
        assert verdict in text
        passed = sum(r["passed"] for r in report["checks"])
        assert f"{verdict}: {passed} passed" in text
        assert report["backbone"]["fingerprint"][:12] in text
    rows = every_check(app)
    checks = {side: {r["check_id"]: r for r in report["checks"]} for side, report in saved.items()}
    assert set(rows) == set(checks["A"]) | set(checks["B"])
    for check_id, row in rows.items():
        for side, by_id in checks.items():
            if check_id in by_id:
                assert row[f"{side} measured"] == f"{by_id[check_id]['measured']:.4f}"
                assert row[f"{side} result"] == ("pass" if by_id[check_id]["passed"] else "FAIL")
            else:  # the baseline run measures no drift
                assert check_id.startswith("drift[")
                assert row[f"{side} measured"] == row[f"{side} result"] == "-"
    charts = app.get("plotly_chart")
    assert len(charts) == 3  # presence, baseline-probe drop, direction cosine
    figures = [json.loads(c.proto.spec) for c in charts]
    assert figures[0]["layout"]["title"]["text"].startswith("Concept presence")
    presence_bars = [t for t in figures[0]["data"] if t["type"] == "bar"]
    assert len(presence_bars) == 2  # A and B
    assert presence_bars[1]["y"][1] == checks["B"]["concept[sentiment]::presence@L5"]["measured"]


def test_failing_candidate_is_shown_in_red(audit_reports, reports_dir, open_page) -> None:
    newest, _ = copy_runs(audit_reports, reports_dir)
    candidate = candidate_copy(reports_dir, newest)  # a copy with one drift figure edited to fail
    app = open_page("checkpoints")
    assert not app.exception
    assert app.selectbox[1].value == str(candidate)
    app.selectbox[0].set_value(str(newest)).run()
    assert not app.exception
    (b_text,) = [e.value for e in app.error if e.value.startswith("**B: ")]
    assert b_text.startswith("**B: candidate") and "FAILED" in b_text
    (a_text,) = [v for v in verdicts(app) if v.startswith("**A: ")]
    assert ("PASSED" if json.loads(newest.read_text())["passed"] else "FAILED") in a_text
    rows = every_check(app)
    edited = next(r for c, r in rows.items() if c.startswith("drift[sentiment]::direction"))
    assert (edited["B measured"], edited["B result"]) == ("0.2500", "FAIL")
    assert edited["A result"] == "pass"


def test_one_report_is_shown_alone(audit_reports, reports_dir, open_page) -> None:
    (only,) = copy_runs(audit_reports, reports_dir, only_newest=True)
    app = open_page("checkpoints")
    assert not app.exception
    assert len(app.selectbox) == 0
    assert len(verdicts(app)) == 1
    assert any("shown alone" in c.value for c in app.caption)
    rows = every_check(app)
    saved = json.loads(only.read_text())["checks"]
    assert list(rows) == [r["check_id"] for r in saved]
    assert all("B measured" not in row for row in rows.values())
    assert len(app.get("plotly_chart")) == 3


def test_corrupt_report_is_skipped_and_named(audit_reports, reports_dir, open_page) -> None:
    copy_runs(audit_reports, reports_dir)
    broken = reports_dir / "20300101T000000Z-audit-minilm"
    broken.mkdir()
    (broken / "report.json").write_text('{"schema_version": 1, "checkpoint": ')
    app = open_page("checkpoints")
    assert not app.exception
    assert any(broken.name in c.value and "not valid JSON" in c.value for c in app.caption)
    assert len(app.selectbox) == 2
    assert all(str(broken) not in s.options for s in app.selectbox)
    assert len(verdicts(app)) == 2
