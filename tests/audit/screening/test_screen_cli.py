"""`audit screen fit|list|show` on the session's AUDIT_HOME catalog."""

from __future__ import annotations

import json

from click.testing import CliRunner

from audit.cli import main
from probes.requests import load_requests


def test_list_and_show_the_session_bank(screen_bank) -> None:
    listed = CliRunner().invoke(main, ["screen", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    versions = [e["version"] for e in json.loads(listed.stdout)]
    assert screen_bank.version in versions
    shown = CliRunner().invoke(main, ["screen", "show", screen_bank.version[:10], "--json"])
    assert shown.exit_code == 0, shown.output
    summary = json.loads(shown.stdout)
    assert summary["version"] == screen_bank.version
    assert {s["spec"]["name"] for s in summary["screens"]} == {
        s.spec.name for s in screen_bank.screens
    }
    table = CliRunner().invoke(main, ["screen", "show"])
    assert "(primary)" in table.output and "| screen |" in table.output
    missing = CliRunner().invoke(main, ["screen", "show", "nonexistent"])
    assert missing.exit_code == 1 and "audit screen list" in missing.output


def test_fit_from_jsonl_saves_a_new_version(screen_bank, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("AUDIT_HOME", str(tmp_path / "home"))  # the session catalog stays as is
    requests = load_requests(["advbench", "gsm8k", "bigbench_social_iqa"], split="train")
    sample = requests.subsample(120, seed=3)
    data = tmp_path / "train.jsonl"
    data.write_text(
        "".join(
            json.dumps({"text": t, "label": "harmful" if y else "benign"}) + "\n"
            for t, y in zip(sample.texts, sample.labels.tolist(), strict=True)
        )
    )
    fitted = CliRunner().invoke(main, ["screen", "fit", "--data", str(data), "--json"])
    assert fitted.exit_code == 0, fitted.output
    summary = json.loads(fitted.stdout[fitted.stdout.index("{") :])
    assert summary["training"]["n_train"] + summary["training"]["n_calibration"] == 120
    assert summary["version"] != screen_bank.version
    listed = json.loads(CliRunner().invoke(main, ["screen", "list", "--json"]).stdout)
    assert [e["version"] for e in listed] == [summary["version"]]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "hi", "label": "maybe"}\n')
    refused = CliRunner().invoke(main, ["screen", "fit", "--data", str(bad)])
    assert refused.exit_code == 1 and "line 1" in refused.output
