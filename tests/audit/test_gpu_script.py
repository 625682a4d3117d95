"""benchmarks/gpu.sh: syntax, the steps of a dry run, and a CPU smoke run of the real path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu.sh"


def _run(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        env={**os.environ, "AUDIT_BENCH_OUT": str(tmp_path / "bench"), **env},
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_script_is_executable_and_parses() -> None:
    assert os.access(SCRIPT, os.X_OK)
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_dry_run_lists_offline_install_and_both_cuda_runs(tmp_path) -> None:
    wheels = SCRIPT.parent / "wheels"
    result = _run(["--dry-run"], tmp_path, AUDIT_BENCH_VENV=str(tmp_path / "venv"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any("-m venv --system-site-packages" in line for line in lines)
    install = [line for line in lines if "pip install" in line]
    offline = any(wheels.glob("*.whl"))
    assert install and all(("--no-index" in line) == offline for line in install)
    assert any("torch.cuda.is_available()" in line for line in lines)
    bench = [line for line in lines if "audit.cli bench" in line]
    assert len(bench) == 2 and all("--device cuda" in line for line in bench)
    assert "--backbone random:gpt2-medium" in bench[1]
    assert not (tmp_path / "venv").exists()  # nothing ran


def test_unknown_argument_is_refused(tmp_path) -> None:
    result = _run(["--fast"], tmp_path)
    assert result.returncode == 2 and "unknown argument --fast" in result.stderr


@pytest.mark.slow
def test_cpu_smoke_run_writes_both_reports(tmp_path) -> None:
    venv = Path(sys.executable).parent.parent  # the test venv imports audit: reused, no install
    result = _run(
        ["--quick"],
        tmp_path,
        AUDIT_BENCH_VENV=str(venv),
        AUDIT_BENCH_DEVICE="cpu",
        AUDIT_BENCH_ONLY="none",  # one bench process: the random backbone's
        AUDIT_BENCH_LARGE="random:gpt2-tiny",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "reusing" in result.stdout and "reports (bench.json + bench.md)" in result.stdout
    payloads = [json.loads(p.read_text()) for p in (tmp_path / "bench").rglob("bench.json")]
    assert [p["backbone"]["name"] for p in payloads] == ["random-gpt2-tiny-0"]
    for payload in payloads:
        figures = {f["name"]: f for f in payload["figures"]}
        waste = figures["padding share of token slots, planned batches"]
        assert 0 < waste["ours"] < waste["notes"]["padding_fraction"]["corpus"]
