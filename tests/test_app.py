"""The Streamlit app runs: empty state explained, a real report rendered."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "reports" / "example" / "report.json"


def test_empty_reports_folder_explains_what_to_do(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    assert not app.exception
    assert "audit probe" in app.info[0].value


def test_report_is_rendered(tmp_path, monkeypatch) -> None:
    run = tmp_path / "reports" / "20260101T000000Z-toxicity"
    run.mkdir(parents=True)
    shutil.copy(EXAMPLE, run / "report.json")
    monkeypatch.chdir(tmp_path)
    app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    assert not app.exception
    report = json.loads(EXAMPLE.read_text())
    assert [h.value for h in app.subheader] == [
        f"{s['dataset']} ({s['concept']})" for s in report["results"]
    ]
    assert report["backbone"]["fingerprint"] in app.caption[0].value
