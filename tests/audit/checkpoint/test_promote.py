"""audit promote: refuses without a passing audit; after one, re-binds screens and logs it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModel

from audit.checkpoint.promote import PROMOTIONS_FILE, PromotionError, promote
from audit.checkpoint.runner import CheckpointAudit
from audit.checkpoint.spec import parse_spec
from audit.cli import main
from audit.screening.catalog import list_banks, save_to_catalog
from probes.backbone import fingerprint_folder
from probes.bundled import minilm_folder

SPEC = """\
schema_version = 1
name = "promote"
n_samples = 200
[concepts.sentiment]
layers = [5]
min_auroc = 0.6
scorecard = []
[parity]
enabled = false
"""


@pytest.fixture(scope="module")
def nudged_checkpoint(tmp_path_factory) -> Path:
    """Return MiniLM with one LayerNorm bias moved by 1e-5: new fingerprint, same behaviour."""
    folder = tmp_path_factory.mktemp("nudged")
    source = minilm_folder()
    model = AutoModel.from_pretrained(source)
    with torch.no_grad():
        model.encoder.layer[0].output.LayerNorm.bias.add_(1e-5)
    model.save_pretrained(folder, safe_serialization=True)
    for path in source.iterdir():
        if path.is_file() and not (folder / path.name).exists() and "token" in path.name:
            shutil.copy(path, folder / path.name)
    for name in ("vocab.txt", "special_tokens_map.json"):
        if (source / name).exists():
            shutil.copy(source / name, folder / name)
    return folder


def _audit(checkpoint: Path, folder: Path, *, update: bool) -> dict:
    spec = parse_spec(SPEC)
    audit = CheckpointAudit(
        checkpoint=checkpoint,
        spec=spec,
        spec_path=folder / "audit.toml",
        baseline_dir=folder / "audit.baseline",
        update_baseline=update,
    )
    plan = audit.plan()
    for planned in plan:
        audit.outcome(planned)
    run_dir = folder / "reports" / ("baseline" if update else "compare")
    run_dir.mkdir(parents=True)
    audit.finish(plan, run_dir)
    return json.loads((run_dir / "report.json").read_text())


def test_promote_needs_a_passing_audit_then_rebinds_and_logs(
    tmp_path, nudged_checkpoint, screen_bank, monkeypatch
) -> None:
    home = tmp_path / "home"  # promotion re-binds in place: keep the session's heads out of it
    monkeypatch.setenv("AUDIT_HOME", str(home))
    save_to_catalog(screen_bank)
    served = fingerprint_folder(minilm_folder())
    target = fingerprint_folder(nudged_checkpoint)
    assert target != served
    with pytest.raises(PromotionError, match="No passing audit"):
        promote(nudged_checkpoint, reports_root=tmp_path / "reports")
    assert _audit(minilm_folder(), tmp_path, update=True)["passed"]
    report = _audit(nudged_checkpoint, tmp_path, update=False)
    assert report["passed"], report["checks"]
    before = len(list_banks(target))
    result = CliRunner().invoke(
        main, ["promote", str(nudged_checkpoint), "--reports", str(tmp_path / "reports"), "--json"]
    )
    assert result.exit_code == 0, result.output
    promotion = json.loads(result.output)
    assert promotion["from_fingerprint"] == served and promotion["to_fingerprint"] == target
    assert screen_bank.version in {s["from"] for s in promotion["screens"]}
    assert len(list_banks(target)) == before + len(promotion["screens"])
    logged = (home / PROMOTIONS_FILE).read_text().splitlines()
    assert json.loads(logged[-1])["to_fingerprint"] == target
