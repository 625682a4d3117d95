"""The screen bank on real MiniLM activations: separation, thresholds, calibration, persistence."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from audit.screening import (
    ScreenSpec,
    clopper_pearson,
    expected_calibration_error,
    load_bank,
    save_bank,
    threshold_for_fpr,
)
from probes.errors import CorruptArtifactError, FingerprintMismatchError, InvalidInputError
from probes.metrics import auroc
from probes.requests import load_requests
from probes.store import ActivationStore

N_TRAIN, N_CALIBRATION, N_EVAL = 400, 300, 200


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return ActivationStore(tmp_path_factory.mktemp("screen-store"))


@pytest.fixture(scope="module")
def bank(screen_bank):
    return screen_bank  # 400 train / 300 calibration requests, fitted once per session


@pytest.fixture(scope="module")
def evaluation(backbone, store, bank):
    requests = load_requests(split="evaluation").subsample(N_EVAL, seed=0)
    hooks = sorted({h for h, _ in bank.readers})
    poolings = sorted({p for _, p in bank.readers})
    pooled = store.get(backbone, requests.texts, hooks, poolings, progress=False).pooled
    return requests, {r: pooled[r] for r in bank.readers}


def test_bank_separates_held_out_requests(bank, evaluation):
    requests, pooled = evaluation
    scores = bank.scores(pooled)
    for name, values in scores.items():
        assert auroc(values, requests.labels) > 0.9, name  # measured about 0.98 or more


def test_thresholds_meet_target_fpr_on_benign_calibration_rows(bank):
    for screen in bank.screens:
        for threshold, target in ((screen.block, 0.01), (screen.flag, 0.05)):
            assert threshold.target_fpr == target
            assert threshold.n_benign > 100
            assert threshold.fpr.value <= target + 1e-9
            assert threshold.fpr.low <= threshold.fpr.value <= threshold.fpr.high
            assert threshold.n_false_positive == round(threshold.fpr.value * threshold.n_benign)
            assert threshold.tpr is not None and threshold.n_harmful > 50  # 62 of 300
            assert threshold.tpr.low <= threshold.tpr.value <= threshold.tpr.high
        assert screen.block.value >= screen.flag.value


def test_threshold_for_fpr_is_the_lowest_meeting_the_target():
    benign = np.linspace(0.0, 0.99, 100)
    threshold = threshold_for_fpr("flag", 0.05, benign)
    assert threshold.n_false_positive == 5
    assert (
        benign >= np.nextafter(threshold.value, -np.inf)
    ).sum() == 6  # any lower lets in one more
    interval = clopper_pearson(5, 100)
    assert interval.low == pytest.approx(0.01643, abs=1e-4)
    assert interval.high == pytest.approx(0.11284, abs=1e-4)


def test_calibration_lowers_ece(bank, evaluation):
    requests, pooled = evaluation
    for screen in bank.screens:
        report = screen.calibration
        assert report.method in ("platt", "isotonic")
        # The probe's own sigmoid is already fairly calibrated (ECE about 0.02 measured), so the
        # check is "not worse beyond sampling noise", on cross-fitted and held-out rows alike;
        # with 62 harmful calibration rows, a cross-fitted ECE moves by about 0.02.
        assert report.ece_calibrated <= report.ece_raw + 0.03
        raw = 1 / (1 + np.exp(-screen.raw_logits(pooled)))
        calibrated = screen.scores(pooled)
        ece_raw = expected_calibration_error(raw, requests.labels)
        assert expected_calibration_error(calibrated, requests.labels) <= ece_raw + 0.03


def test_decisions_follow_ordered_thresholds(bank, evaluation):
    _, pooled = evaluation
    decisions = bank.score(pooled)
    primary = bank.screen(bank.primary)
    assert bank.primary == "ensemble_l2_5"
    assert {d.decision for d in decisions} >= {"allow", "block"}
    for d in decisions:
        assert d.screen == bank.primary and d.version == bank.version
        assert set(d.scores) == {s.spec.name for s in bank.screens}
        assert d.score == d.scores[bank.primary]
        assert d.block_threshold == primary.block.value >= d.flag_threshold
        if d.decision == "block":
            assert d.score >= d.block_threshold
        elif d.decision == "flag":
            assert d.block_threshold > d.score >= d.flag_threshold
        else:
            assert d.score < d.flag_threshold


def test_readers_are_exactly_what_score_reads(bank, evaluation):
    _, pooled = evaluation

    class Recording(dict):
        read: set = set()

        def __getitem__(self, key):
            self.read.add(key)
            return super().__getitem__(key)

    recording = Recording(pooled)
    recording.read = set()
    bank.score(recording)
    assert recording.read == set(bank.readers)
    for reader in bank.readers:
        with pytest.raises(InvalidInputError, match="lack"):
            bank.score({r: v for r, v in pooled.items() if r != reader})


def test_save_load_round_trip_gives_identical_scores(bank, evaluation, backbone, tmp_path):
    _, pooled = evaluation
    save_bank(bank, tmp_path / "bank")
    meta = json.loads((tmp_path / "bank" / "bank.json").read_text())
    assert meta["schema_version"] == 1 and meta["version"] == bank.version
    assert meta["fingerprint"] == backbone.fingerprint
    n_framed = round(0.3 * N_TRAIN)  # framed training copies (audit.screening.augment)
    assert meta["training"]["n_train"] == N_TRAIN + n_framed and meta["training"]["seed"] == 0
    loaded = load_bank(tmp_path / "bank", backbone)
    assert loaded.version == bank.version
    assert loaded.score(pooled) == bank.score(pooled)


def test_load_refuses_another_backbone(bank, backbone, tmp_path):
    save_bank(bank, tmp_path)
    other = SimpleNamespace(name="other", fingerprint="0" * 64, d_model=384, n_layers=6)
    with pytest.raises(FingerprintMismatchError, match="refusing to serve"):
        load_bank(tmp_path, other)


def test_load_refuses_tampered_or_broken_files(bank, backbone, tmp_path):
    folder = save_bank(bank, tmp_path / "bank")
    meta_path = folder / "bank.json"
    good = meta_path.read_text()
    meta = json.loads(good)
    meta["screens"][0]["block"]["value"] = 0.0  # a stale or edited threshold
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CorruptArtifactError, match="version id"):
        load_bank(folder, backbone)
    meta_path.write_text(good[: len(good) // 2])  # truncated JSON
    with pytest.raises(CorruptArtifactError, match="invalid"):
        load_bank(folder, backbone)
    meta_path.write_text(good)
    tensors = folder / "bank.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:100])
    with pytest.raises(CorruptArtifactError, match="unreadable"):
        load_bank(folder, backbone)
    tensors.unlink()
    with pytest.raises(CorruptArtifactError, match="missing"):
        load_bank(folder, backbone)


def test_load_refuses_tensors_not_matching_metadata(bank, backbone, tmp_path):
    from safetensors.numpy import load_file, save_file

    folder = save_bank(bank, tmp_path / "bank")
    tensors = load_file(str(folder / "bank.safetensors"))
    name = bank.screens[0].spec.name
    tensors[f"{name}.coef"] = tensors[f"{name}.coef"][:, :10].copy()
    save_file(tensors, str(folder / "bank.safetensors"))
    with pytest.raises(CorruptArtifactError):
        load_bank(folder, backbone)


def test_tenant_flag_recalibration_changes_only_the_flag_threshold(bank, evaluation):
    requests, pooled = evaluation
    benign = {r: v[requests.labels == 0] for r, v in pooled.items()}
    tenant = bank.with_flag_threshold(benign, 0.2)
    before, after = bank.screen(bank.primary), tenant.screen(bank.primary)
    assert after.block == before.block
    assert after.flag != before.flag and after.flag.target_fpr == 0.2
    assert after.flag.n_benign == int((requests.labels == 0).sum())
    assert after.flag.fpr.value <= 0.2 and after.flag.value <= after.block.value
    for name in (s.spec.name for s in bank.screens if s.spec.name != bank.primary):
        assert tenant.screen(name).flag == bank.screen(name).flag
    assert tenant.version != bank.version
    scores = before.scores(benign)
    assert (
        tenant.with_flag_threshold(scores, 0.2).screen(bank.primary).flag.value == after.flag.value
    )


def test_specs_are_validated():
    with pytest.raises(InvalidInputError, match="pools by 'max'"):
        ScreenSpec("bad", "logistic_max", (4,), "mean")
    with pytest.raises(InvalidInputError, match="one layer"):
        ScreenSpec("bad", "logistic_mean", (3, 4), "mean")
    with pytest.raises(InvalidInputError, match="kind"):
        ScreenSpec("bad", "mlp", (4,), "mean")  # type: ignore[arg-type]
