"""The `audit` CLI end to end on the real backbone: reports, errors, store, datasets."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from audit.cli import main
from probes import Backbone, load_jsonl, load_probe


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(scope="module")
def toy_jsonl(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "mood.jsonl"
    good = [
        "what a wonderful day",
        "I love this so much",
        "this is great news",
        "such a happy ending",
        "brilliant and kind",
        "a delightful surprise",
        "warm, funny and moving",
        "the best meal ever",
    ]
    bad = [
        "what an awful day",
        "I hate this so much",
        "this is terrible news",
        "such a sad ending",
        "cruel and dull",
        "a miserable failure",
        "cold, boring and slow",
        "the worst meal ever",
    ]
    lines = [json.dumps({"text": t, "label": "positive", "source": "toy"}) for t in good]
    lines += [json.dumps({"text": t, "label": "negative", "source": "toy"}) for t in bad]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_probe_jsonl_writes_report_matching_library(
    runner, toy_jsonl, tmp_path, backbone: Backbone
) -> None:
    result = runner.invoke(
        main,
        [
            "probe",
            "--data",
            str(toy_jsonl),
            "--out",
            str(tmp_path),
            "--json",
            "--quiet",
            "--n-boot",
            "200",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    run_dir = Path(summary["report_dir"])
    report = json.loads((run_dir / "report.json").read_text())
    assert report["schema_version"] == 1
    assert report["backbone"]["fingerprint"] == backbone.fingerprint
    dataset = load_jsonl(toy_jsonl)
    assert report["datasets"][0]["hash"] == dataset.hash
    assert report["datasets"][0]["n_samples"] == 16
    assert {"torch", "transformer-lens", "scikit-learn"} <= set(report["versions"])
    html = (run_dir / "report.html").read_text()
    assert "plotly" in html.lower() and "<script src=" not in html  # self-contained
    assert "mood" in (run_dir / "report.md").read_text()
    # the report's figures are the library's: re-score a saved probe on the same activations
    section = report["results"][0]
    score = next(s for s in section["scores"] if s["probe"] == "logistic" and s["layer"] == 5)
    probe, meta = load_probe(
        section["probe_files"]["logistic@blocks.5.hook_resid_post"],
        fingerprint=backbone.fingerprint,
    )
    assert meta.metrics["auroc"]["value"] == pytest.approx(score["auroc"]["value"])
    from probes.datasets import Split  # noqa: F401
    from probes.metrics import auroc

    split = dataset.split(test_size=0.3, seed=0)
    texts = [dataset.texts[i] for i in split.test]
    feats = backbone.extract(texts, ["blocks.5.hook_resid_post"], progress=False).pooled[
        ("blocks.5.hook_resid_post", "mean")
    ]
    labels = (dataset.labels[split.test] == 1).astype(int)
    assert auroc(probe.decision_function(feats), labels) == pytest.approx(
        score["auroc"]["value"], abs=1e-9
    )


def test_probe_bundled_concept_human_output(runner, tmp_path) -> None:
    result = runner.invoke(
        main,
        [
            "probe",
            "--concept",
            "toxicity",
            "--out",
            str(tmp_path),
            "--quiet",
            "--n-boot",
            "200",
            "--layers",
            "2,5",
            "--probe",
            "logistic",
            "--no-scorecard",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "toxigen" in result.output and "report:" in result.output
    report = json.loads(next(tmp_path.rglob("report.json")).read_text())
    assert {s["layer"] for s in report["results"][0]["scores"]} == {2, 5}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["probe"], "Nothing to probe"),
        (["probe", "--concept", "honesty"], "Unknown concept 'honesty'"),
        (["probe", "--dataset", "imdb"], "imdb"),
        (["probe", "--data", "missing.jsonl"], "missing.jsonl"),
        (["probe", "--concept", "toxicity", "--layers", "9"], "out of range"),
        (["probe", "--concept", "toxicity", "--backbone", "no/such-model"], "bundled alias"),
    ],
)
def test_user_errors_are_one_clean_line(runner, args, message: str) -> None:
    result = runner.invoke(main, args)
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_bad_jsonl_line_names_the_line(runner, tmp_path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine", "label": 1}\n{"text": "broken", "label": \n')
    result = runner.invoke(main, ["probe", "--data", str(path)])
    assert result.exit_code == 1
    assert "line 2" in result.output


@pytest.mark.skipif(
    os.geteuid() == 0, reason="root can write anywhere; chmod cannot make a folder unwritable"
)
def test_unwritable_report_folder(runner, toy_jsonl, tmp_path) -> None:
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    result = runner.invoke(main, ["probe", "--data", str(toy_jsonl), "--out", str(out / "x")])
    assert result.exit_code == 1 and "writable" in result.output


def test_report_folder_that_is_a_file(runner, toy_jsonl, tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = runner.invoke(main, ["probe", "--data", str(toy_jsonl), "--out", str(blocker)])
    assert result.exit_code == 1 and "writable" in result.output


def test_store_list_and_prune(runner) -> None:
    listed = runner.invoke(main, ["store", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    shards = json.loads(listed.stdout)["shards"]
    assert shards, "earlier CLI runs in this session stored activations"
    pruned = runner.invoke(main, ["store", "prune", "--older-than", "365", "--json"])
    assert json.loads(pruned.stdout)["deleted"] == 0
    assert runner.invoke(main, ["store", "prune"]).exit_code == 1


def test_datasets_and_backbone_commands(runner, backbone: Backbone) -> None:
    result = runner.invoke(main, ["datasets", "--json"])
    assert result.exit_code == 0, result.output
    names = {d["name"] for d in json.loads(result.stdout)}
    assert {"rotten_tomatoes", "tweets", "cities", "capitals", "toxigen"} <= names
    result = runner.invoke(main, ["backbone", "--json", "--hooks"])
    info = json.loads(result.stdout)
    assert info["fingerprint"] == backbone.fingerprint
    assert "blocks.5.hook_resid_post" in info["hook_names"]


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["probe"],
        ["store"],
        ["store", "list"],
        ["store", "prune"],
        ["datasets"],
        ["backbone"],
        ["bench"],
    ],
)
def test_every_command_has_help(runner, command) -> None:
    result = runner.invoke(main, [*command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_bench_quick_writes_ratios(runner, tmp_path, screen_bank) -> None:
    from audit.bench import BENCHMARKS, RAY_BENCHMARKS

    # The Ray benchmarks start Ray workers (tens of seconds each): run them with --only. The
    # padding benchmark runs in benchmarks/gpu.sh's CPU smoke test (tests/audit/test_gpu_script.py)
    # and the ones below in tests of their own (test_bench_tenants, test_bench_screening,
    # test_bench_checkpoint); this one runs the rest through the command.
    tested_alone = {
        "tenants_mixed",
        "heads_cold",
        "blocks_training",
        "screening",
        "checkpoint_audit",
    }
    skip = {*RAY_BENCHMARKS, "padding", *tested_alone}
    only = [a for name in BENCHMARKS if name not in skip for a in ("--only", name)]
    result = runner.invoke(main, ["bench", "--quick", *only, "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    figures = {f["benchmark"]: f for f in payload["figures"]}
    assert {"extraction", "store_read"} <= set(figures)
    for f in payload["figures"]:
        assert (
            f["ours"] > 0
            and f["baseline"] > 0
            and f["ratio"] == pytest.approx(f["ours"] / f["baseline"])
        )
    assert figures["store_read"]["notes"]["forward_passes_on_reread"] == 0
    assert (next(tmp_path.rglob("bench.md"))).read_text().startswith("Benchmarks on")


def test_probe_with_scorecard_flags(runner, toy_jsonl, tmp_path) -> None:
    args = [
        "probe",
        "--concept",
        "toxicity",
        "--out",
        str(tmp_path),
        "--json",
        "--quiet",
        "--n-boot",
        "200",
        "--checks",
        "selectivity,calibration",
        "--threshold",
        "selectivity=0.99",
    ]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    (card,) = summary["scorecards"]
    assert card["dataset"] == "toxigen"
    assert card["overall"] == "fragile" and card["failed"] == ["selectivity"]
    report = json.loads((Path(summary["report_dir"]) / "report.json").read_text())
    (full,) = report["scorecards"]
    checks = {c["check"]: c for c in full["checks"]}
    assert set(checks) == {"presence", "selectivity", "calibration"}
    assert checks["selectivity"]["threshold"]["value"] == 0.99
    assert report["settings"]["thresholds"]["selectivity"]["value"] == 0.99
    html = (Path(summary["report_dir"]) / "report.html").read_text()
    assert "Scorecard" in html and "reliability" in html


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--threshold", "selectivity"], "NAME=VALUE"),
        (["--threshold", "vibes=1"], "Unknown threshold 'vibes'"),
        (["--checks", "vibes"], "Known checks"),
    ],
)
def test_scorecard_flag_errors(runner, toy_jsonl, extra, message: str) -> None:
    result = runner.invoke(main, ["probe", "--data", str(toy_jsonl), *extra])
    assert result.exit_code == 1 and message in result.output, result.output


def test_transfer_file_with_unmatched_labels(runner, toy_jsonl, tmp_path) -> None:
    other = tmp_path / "other.jsonl"
    other.write_text('{"text": "a", "label": "spam"}\n{"text": "b", "label": "ham"}\n')
    result = runner.invoke(
        main,
        [
            "probe",
            "--data",
            str(toy_jsonl),
            "--transfer",
            str(other),
            "--out",
            str(tmp_path),
            "--quiet",
            "--checks",
            "transfer",
        ],
    )
    assert result.exit_code == 1
    assert "negative" in result.output and "positive" in result.output


def test_checks_command(runner) -> None:
    result = runner.invoke(main, ["checks", "--json"])
    assert result.exit_code == 0
    body = json.loads(result.stdout)
    assert "causal" in body["checks"] and body["thresholds"]["selectivity"]["op"] == ">="


def test_failed_run_leaves_no_empty_report_folder(runner, tmp_path) -> None:
    result = runner.invoke(
        main, ["probe", "--concept", "toxicity", "--layers", "9", "--out", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert list(tmp_path.iterdir()) == []
