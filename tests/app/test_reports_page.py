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
