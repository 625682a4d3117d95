"""The pytest plugin end to end: real checkpoints, a real baseline, pytester runs of the audit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from probes.bundled import minilm_folder

pytest_plugins = ["pytester"]

SPEC = """\
schema_version = 1
name = "minilm-ci"
n_samples = 200

[concepts.sentiment]
layers = [4, 5]
min_auroc = 0.6
scorecard = ["selectivity"]
thresholds = { selectivity = 0.05 }
max_auroc_drop = 0.05
min_direction_cosine = 0.8

[parity]
enabled = false
"""


def _run_audit(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=folder,
        env={**os.environ},
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="session")
def recorded_baseline(tmp_path_factory) -> Path:
    """Return a folder holding audit.toml and the baseline recorded on the embedded MiniLM."""
    folder = tmp_path_factory.mktemp("audit-baseline")
    (folder / "audit.toml").write_text(SPEC)
    result = _run_audit(folder, f"--audit-checkpoint={minilm_folder()}", "--audit-update-baseline")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (folder / "audit.baseline" / "baseline.json").is_file()
    return folder


@pytest.fixture
def audit_dir(pytester: pytest.Pytester, recorded_baseline: Path) -> Path:
    shutil.copy(recorded_baseline / "audit.toml", pytester.path / "audit.toml")
    shutil.copytree(recorded_baseline / "audit.baseline", pytester.path / "audit.baseline")
    return pytester.path


def _report(folder: Path) -> dict:
    (path,) = folder.glob("reports/*/report.json")
    return json.loads(path.read_text())


def test_help_lists_the_audit_options(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(["*checkpoint audits*", "*--audit-checkpoint=PATH*"])
    assert "--audit-update-baseline" in result.stdout.str()


def test_baseline_records_figures_probes_and_a_report(recorded_baseline: Path) -> None:
    baseline = json.loads((recorded_baseline / "audit.baseline" / "baseline.json").read_text())
    assert baseline["spec_name"] == "minilm-ci"
    assert set(baseline["concepts"]["sentiment"]["auroc"]) == {"4", "5"}
    probes = sorted(p.name for p in (recorded_baseline / "audit.baseline" / "probes").iterdir())
    assert probes == [
        "sentiment-L4.json",
        "sentiment-L4.safetensors",
        "sentiment-L5.json",
        "sentiment-L5.safetensors",
    ]
    report = _report(recorded_baseline)
    assert report["mode"] == "update-baseline" and report["passed"]
    assert report["baseline"]["written"]
    assert (Path(report["baseline"]["written"]).parent / "baseline.json").is_file()
    junit = next(recorded_baseline.glob("reports/*/junit.xml")).read_text()
    assert 'tests="3"' in junit and "presence@L5" in junit


def test_unchanged_checkpoint_passes(audit_dir: Path, pytester, unchanged_checkpoint) -> None:
    result = pytester.runpytest_subprocess(f"--audit-checkpoint={unchanged_checkpoint}", "-v")
    result.assert_outcomes(passed=7)
    result.stdout.fnmatch_lines(
        [
            "*audit.toml::drift[[]sentiment[]]::baseline_probe@L5 PASSED*",
            "*checkpoint audit*",
            "*checks measured: 7 passed, 0 failed, 0 skipped*",
        ]
    )
    report = _report(audit_dir)
    assert report["passed"] and report["mode"] == "compare"


def test_flipped_sentiment_checkpoint_fails_its_drift_checks(
    audit_dir: Path, pytester, flipped_checkpoint, screen_bank
) -> None:
    # The deployed screens (the session's bank, fitted on MiniLM) read the flipped checkpoint.
    spec = audit_dir / "audit.toml"
    spec.write_text(spec.read_text() + "\n[screening]\nn_samples = 40\nmin_recall = 0.0\n")
    result = pytester.runpytest_subprocess(f"--audit-checkpoint={flipped_checkpoint}")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) >= 2, result.stdout.str()
    out = result.stdout.str()
    assert "drift[sentiment]::baseline_probe@L5" in out
    assert "expected <= 0.05, measured" in out  # expected vs measured, with the interval
    report = _report(audit_dir)
    failed = {row["check_id"] for row in report["checks"] if not row["passed"]}
    assert "drift[sentiment]::baseline_probe@L5" in failed
    assert not report["passed"]
    screening = {row["check_id"]: row for row in report["checks"] if "screening" in row["check_id"]}
    recall = screening["screening::recall_at_block"]
    assert recall["n"] == 40 and recall["details"]["cross_fingerprint"] is True
    assert recall["details"]["bank"] == screen_bank.version


def test_corrupt_checkpoint_fails_with_a_clear_message(
    audit_dir: Path, pytester, corrupt_checkpoint
) -> None:
    result = pytester.runpytest_subprocess(f"--audit-checkpoint={corrupt_checkpoint}")
    assert result.ret != 0
    out = result.stdout.str()
    assert "could not be measured" in out and "safetensors" in out
    assert "Traceback" not in out


def test_missing_baseline_names_the_fix(pytester, unchanged_checkpoint) -> None:
    (pytester.path / "audit.toml").write_text(SPEC)
    result = pytester.runpytest_subprocess(f"--audit-checkpoint={unchanged_checkpoint}")
    assert result.ret != 0
    assert "--audit-update-baseline" in result.stdout.str()


def test_invalid_spec_is_a_usage_error_naming_the_field(pytester, unchanged_checkpoint) -> None:
    (pytester.path / "audit.toml").write_text(SPEC.replace("min_auroc = 0.6", "min_auroc = 1.6"))
    result = pytester.runpytest_subprocess(f"--audit-checkpoint={unchanged_checkpoint}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "concepts.sentiment.min_auroc" in result.stderr.str()
