"""The screen-eval report as tables and figures for the workbench, read from a real report.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from audit.screening.evaluate import (
    eval_figures,
    headline_table,
    list_eval_reports,
    robustness_figure,
    robustness_table,
    roc_figure,
    source_figure,
    source_table,
)
from probes.errors import InvalidInputError

ROOT = Path(__file__).resolve().parents[3]
REPORT = ROOT / "reports" / "example-screen-eval" / "report.json"


@pytest.fixture(scope="module")
def report() -> dict:
    return json.loads(REPORT.read_text())


def test_list_eval_reports_newest_by_created_at_skipping_others(tmp_path, report) -> None:
    assert list_eval_reports(tmp_path / "missing") == []
    for name, created in (("b-new", "2026-02-01"), ("z-old", "2026-01-01")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(json.dumps({**report, "created_at": created}))
    (tmp_path / "probe").mkdir()
    shutil.copy(ROOT / "reports" / "example" / "report.json", tmp_path / "probe")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "report.json").write_text("{not json")
    found = list_eval_reports(tmp_path)
    assert [p.parent.name for p in found] == ["b-new", "z-old"]


def test_headline_table_has_every_scorer_with_intervals_and_counts(report) -> None:
    section = report["backbones"][0]
    rows = headline_table(section)
    assert [r["scorer"] for r in rows] == [s["name"] for s in section["scorers"]]
    assert rows[0]["kind"] == "primary screen"
    assert {r["kind"] for r in rows[1:]} == {"screen", "baseline"}
    m = section["scorers"][0]["metrics"]
    auroc = m["auroc"]
    assert rows[0]["AUROC"].startswith(f"{auroc['value']:.3f} [{auroc['low']:.3f}, ")
    fpr = m["fpr_at_block"]
    assert f"FP {fpr['n_false_positive']}/{fpr['n_benign']}" in rows[0]["FPR @block"]
    assert rows[0]["TPR @0.1% FPR"] == "n/a"  # under 3,000 benign rows
    blocked = section["scorers"][0]["overrefusal"]["blocked"]
    assert rows[0]["over-refusal (blocked)"].endswith(
        f"({blocked['n_false_positive']}/{blocked['n_benign']})"
    )
    real = headline_table(section, real_benign=True)
    real_auroc = section["scorers"][0]["metrics_real_benign"]["auroc"]["value"]
    assert real[0]["AUROC"].startswith(f"{real_auroc:.3f}")


def test_source_table_rates_by_label(report) -> None:
    section = report["backbones"][0]
    rows = source_table(section, "tfidf_logreg")
    assert [r["source"] for r in rows] == list(report["data"]["sources"])
    benign = next(r for r in rows if r["source"] == "gsm8k")
    assert benign["TPR @block"] == "-" and benign["FPR @block"].endswith("/30)")
    harmful = next(r for r in rows if r["source"] == "advbench")
    assert harmful["FPR @block"] == "-" and harmful["TPR @block"].endswith("/156)")
    with pytest.raises(InvalidInputError, match="No scorer 'nope'"):
        source_table(section, "nope")


def test_robustness_table_and_figures(report) -> None:
    section = report["backbones"][0]
    rows = robustness_table(section)
    assert len(rows) == len(section["robustness"]["rows"])
    assert rows[0]["transform"] == "none" and rows[0]["AUROC drop"] == "+0.000"
    assert robustness_table({**section, "robustness": None}) == []
    assert robustness_figure({**section, "robustness": None}) is None
    roc = roc_figure(section)
    assert len(roc.data) == len(section["scorers"])
    assert list(roc.data[0].x) == section["scorers"][0]["roc"]["fpr"]
    assert len(source_figure(section).data) == len(section["scorers"])
    figures = eval_figures(report)
    assert len(figures) == 3
    assert figures[0].to_dict() == roc.to_dict()
