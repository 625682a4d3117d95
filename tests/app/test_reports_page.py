"""The probe reports page: empty state explained, a real report rendered."""

from __future__ import annotations

import json
import shutil

from tests.app.conftest import ROOT

EXAMPLE = ROOT / "reports" / "example" / "report.json"


def test_empty_reports_folder_explains_what_to_do(open_page) -> None:
    app = open_page("reports")
    assert not app.exception
    assert "audit probe" in app.info[0].value


def test_report_is_rendered(reports_dir, open_page) -> None:
    run = reports_dir / "20260101T000000Z-toxicity"
    run.mkdir(parents=True)
    shutil.copy(EXAMPLE, run / "report.json")
    app = open_page("reports")
    assert not app.exception
    report = json.loads(EXAMPLE.read_text())
    assert [h.value for h in app.subheader] == [
        f"{s['dataset']} ({s['concept']})" for s in report["results"]
    ]
    assert report["backbone"]["fingerprint"] in app.caption[0].value


def test_other_reports_in_the_folder_are_passed_over(reports_dir, open_page) -> None:
    shutil.copytree(ROOT / "reports" / "example-screen-eval", reports_dir / "screen-eval-minilm")
    (reports_dir / "broken").mkdir()
    (reports_dir / "broken" / "report.json").write_text("{not json")
    app = open_page("reports")
    assert not app.exception
    assert "audit probe" in app.info[0].value  # no probe report among them
    run = reports_dir / "20260101T000000Z-toxicity"
    run.mkdir()
    shutil.copy(EXAMPLE, run / "report.json")
    app = open_page("reports")
    assert not app.exception
    assert app.selectbox[0].options == ["20260101T000000Z-toxicity"]
