"""`audit tenant ...` end to end on the real MiniLM, in a fresh AUDIT_HOME per test.

The README's documented `audit tenant` commands are parsed from its section and run here, so
they keep working.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from audit.cli import main

ROOT = Path(__file__).resolve().parents[3]
MOOD = ROOT / "tests" / "data" / "mood.jsonl"
README_SECTION = "## Tenant heads from the command line"
# Small sizes for the reliance audit: the README shows the defaults.
SMALL_AUDIT = ["--concepts", "sentiment", "--max-samples", "30", "--controls", "1", "--quiet"]
COMMANDS = ("create", "list", "train", "predict", "audit", "delete", "rotate-key")


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    """Point AUDIT_HOME at an empty folder for this test (the CLI reads it per command)."""
    folder = tmp_path / "home"
    monkeypatch.setenv("AUDIT_HOME", str(folder))
    return folder


def _run(args: list[str]) -> Result:
    return CliRunner().invoke(main, ["tenant", *args])


def _ok_json(args: list[str]) -> dict:
    result = _run([*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _one_line_error(result: Result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_and_json(command: str) -> None:
    result = _run([command, "--help"])
    assert result.exit_code == 0, result.output
    assert "--json" in result.output


def test_create_train_predict_audit_list_delete(home: Path) -> None:
    created = _ok_json(["create", "acme-research"])
    tenant_id = created["tenant_id"]
    assert created["api_key"].startswith("ak_") and created["name"] == "acme-research"
    assert (home / "registry.sqlite3").is_file()  # AUDIT_HOME read when the command ran

    trained = _ok_json(["train", tenant_id, "--data", str(MOOD), "--epochs", "20", "--quiet"])
    head_id = trained["head_id"]
    assert trained["status"] == "ready" and trained["kind"] == "linear"
    assert trained["label_names"] == ["negative", "positive"]
    assert 0.0 <= trained["metrics"]["val_accuracy"] <= 1.0

    texts = ["what a wonderful happy day", "this is awful and I hate it"]
    predicted = _ok_json(["predict", tenant_id, head_id, *texts])
    rows = predicted["predictions"]
    assert [r["text"] for r in rows] == texts
    assert [r["label"] for r in rows] == ["positive", "negative"]
    assert all(abs(sum(r["scores"].values()) - 1.0) < 1e-5 for r in rows)

    report = _ok_json(["audit", tenant_id, head_id, *SMALL_AUDIT])
    assert report["head_id"] == head_id and report["n_texts"] == 24
    assert set(report["scores"]) == {"sentiment"} and 0.0 <= report["scores"]["sentiment"] <= 1.0
    assert report["summary"].startswith("relies on: sentiment ")
    assert report["control"]["name"] == "random control" and report["n_controls"] == 1
    text = _run(["audit", tenant_id, head_id, *SMALL_AUDIT])
    assert text.exit_code == 0, text.output
    assert "relies on: sentiment" in text.output and "random control" in text.output

    listed = _ok_json(["list"])
    assert [(t["tenant_id"], t["n_heads"]) for t in listed["tenants"]] == [(tenant_id, 1)]
    heads = _ok_json(["list", tenant_id])["heads"]
    assert [h["head_id"] for h in heads] == [head_id] and heads[0]["status"] == "ready"

    rotated = _ok_json(["rotate-key", tenant_id])
    assert rotated["api_key"].startswith("ak_") and rotated["api_key"] != created["api_key"]

    refused = _run(["delete", tenant_id])  # asks first; no answer means no
    assert refused.exit_code == 1 and _ok_json(["list"])["tenants"]
    assert _ok_json(["delete", tenant_id, "--yes"])["deleted"] is True
    assert _ok_json(["list"])["tenants"] == []
    assert not (home / "tenants" / tenant_id).exists()


def test_predict_reads_texts_from_a_jsonl_file(home: Path, tmp_path: Path) -> None:
    tenant_id = _ok_json(["create", "acme"])["tenant_id"]
    head_id = _ok_json(["train", tenant_id, "--data", str(MOOD), "--epochs", "5", "--quiet"])[
        "head_id"
    ]
    data = tmp_path / "texts.jsonl"
    data.write_text('{"text": "a lovely film"}\n\n{"text": "a dreadful film"}\n')
    rows = _ok_json(["predict", tenant_id, head_id, "--data", str(data)])["predictions"]
    assert [r["text"] for r in rows] == ["a lovely film", "a dreadful film"]
    _one_line_error(_run(["predict", tenant_id, head_id, "a text", "--data", str(data)]), "either")
    _one_line_error(_run(["predict", tenant_id, head_id]), "either")
    _one_line_error(_run(["predict", tenant_id, "h_000000000000", "x"]), "no head")
    _one_line_error(_run(["audit", tenant_id, head_id, "--concepts", "honesty"]), "honesty")
    _one_line_error(
        _run(["audit", tenant_id, head_id, "--method", "ablate", "--concepts", "sentiment"]),
        "ablate",
    )


def test_bad_input_is_one_clean_line(home: Path, tmp_path: Path) -> None:
    tenant_id = _ok_json(["create", "acme"])["tenant_id"]
    _one_line_error(_run(["train", tenant_id, "--data", str(tmp_path / "nope.jsonl")]), "No file")
    one_label = tmp_path / "one_label.jsonl"
    one_label.write_text(
        "".join(json.dumps({"text": f"t {i}", "label": "a"}) + "\n" for i in range(9))
    )
    _one_line_error(_run(["train", tenant_id, "--data", str(one_label)]), "two labels")
    _one_line_error(_run(["train", tenant_id, "--data", str(MOOD), "--kind", "forest"]), "forest")
    too_few = tmp_path / "too_few.jsonl"
    too_few.write_text('{"text": "good", "label": "p"}\n{"text": "bad", "label": "n"}\n')
    _one_line_error(_run(["train", tenant_id, "--data", str(too_few), "--quiet"]), "too few")
    unknown = "t_0123456789ab"
    _one_line_error(_run(["train", unknown, "--data", str(MOOD)]), unknown, "audit tenant list")
    _one_line_error(_run(["predict", unknown, "h_0123456789ab", "text"]), unknown)
    _one_line_error(_run(["audit", unknown, "h_0123456789ab"]), unknown)
    _one_line_error(_run(["list", unknown]), unknown)
    _one_line_error(_run(["delete", unknown, "--yes"]), unknown)
    _one_line_error(_run(["rotate-key", unknown]), unknown)
    _one_line_error(_run(["create", "   "]), "tenant name")
    # Refused before training: nothing stored. The too-small corpus failed in its job, as over
    # the HTTP API: its head is listed as failed, with the reason.
    (failed,) = _ok_json(["list", tenant_id])["heads"]
    assert failed["status"] == "failed" and "too few" in failed["error"]


# ------------------------------------------------------------------------------- README
def readme_commands() -> list[list[str]]:
    """Return the `audit tenant ...` commands of the README's tenant section, split."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index(README_SECTION)
    end = readme.index("\n## ", start + len(README_SECTION))
    blocks = re.findall(r"```shell\n(.*?)```", readme[start:end], flags=re.S)
    return [
        shlex.split(line, comments=True)
        for block in blocks
        for line in block.splitlines()
        if line.startswith("audit tenant ")
    ]


def test_readme_documents_every_tenant_command() -> None:
    documented = {args[2] for args in readme_commands()}
    assert set(COMMANDS) <= documented


def test_readme_tenant_commands_run(home: Path, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)  # the README's paths are relative to the repository
    ids: dict[str, str] = {}
    for args in readme_commands():
        args = [ids.get(a, a) for a in args[2:]]
        if args[0] == "audit":
            args += SMALL_AUDIT
        if args[0] == "train":
            args += ["--quiet"]
        result = _run(args)
        assert result.exit_code == 0, f"{args}: {result.output}"
        for name, variable in (("tenant_id", "$TENANT"), ("head_id", "$HEAD")):
            found = re.search(rf"^{name}: (\S+)$", result.stdout, flags=re.M)
            if found:
                ids[variable] = found.group(1)
        if args[0] == "audit":
            assert "relies on: sentiment" in result.stdout
    assert {"$TENANT", "$HEAD"} <= set(ids)
