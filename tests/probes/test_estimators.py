"""Probe estimators follow scikit-learn's contract; saved probes reload exactly and safely."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from sklearn.utils.estimator_checks import parametrize_with_checks

from probes import (
    CorruptArtifactError,
    FingerprintMismatchError,
    InvalidInputError,
    LogisticProbe,
    MassMeanProbe,
    ProbeMeta,
    load_probe,
    save_probe,
)
from probes.metrics import auroc, bootstrap_auroc

MASS_MEAN_MULTICLASS_CHECKS: tuple[str, ...] = ()


def _expected_failures(estimator):
    # MassMeanProbe is binary by design; scikit-learn's multi-class checks cannot apply.
    if isinstance(estimator, MassMeanProbe):
        return dict.fromkeys(MASS_MEAN_MULTICLASS_CHECKS, "binary only")
    return {}


@parametrize_with_checks(
    [LogisticProbe(), MassMeanProbe()], expected_failed_checks=_expected_failures
)
def test_sklearn_contract(estimator, check) -> None:
    check(estimator)


def _separable(seed: int = 0, n: int = 200, d: int = 16):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    direction = rng.normal(size=d)
    X = rng.normal(size=(n, d)) + np.outer(y * 2 - 1, direction) * 0.8
    return X, y, direction


@pytest.mark.parametrize("cls", [LogisticProbe, MassMeanProbe])
def test_probes_find_the_planted_direction(cls) -> None:
    X, y, direction = _separable()
    probe = cls().fit(X, y)
    cosine = probe.direction_ @ direction / np.linalg.norm(direction)
    assert cosine > 0.9
    assert auroc(probe.decision_function(X), y) > 0.95
    proba = probe.predict_proba(X)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    assert ((proba[:, 1] > 0.5) == (probe.predict(X) == 1)).mean() > 0.97


def test_one_class_is_a_clear_error() -> None:
    with pytest.raises(InvalidInputError, match="two classes"):
        LogisticProbe().fit(np.ones((10, 3)), np.zeros(10))


def test_bootstrap_interval_brackets_the_estimate() -> None:
    X, y, _ = _separable(n=300)
    scores = X @ np.ones(X.shape[1])
    est = bootstrap_auroc(scores, y, n_boot=500)
    assert est.low <= est.value <= est.high
    assert est.high - est.low < 0.3


def _meta(kind: str, d: int = 16, fingerprint: str = "abc") -> ProbeMeta:
    return ProbeMeta(
        kind=kind,
        concept="toy",
        layer=1,
        hook_name="blocks.1.hook_resid_post",
        pooling="mean",
        d_model=d,
        label_names=["neg", "pos"],
        backbone="toy",
        fingerprint=fingerprint,
    )


@pytest.mark.parametrize(
    ("cls", "kind"), [(LogisticProbe, "logistic"), (MassMeanProbe, "mass_mean")]
)
def test_save_load_roundtrip(tmp_path, cls, kind: str) -> None:
    X, y, _ = _separable()
    probe = cls().fit(X, y)
    save_probe(probe, tmp_path / "p", _meta(kind))
    loaded, meta = load_probe(tmp_path / "p.json", fingerprint="abc")
    np.testing.assert_allclose(loaded.decision_function(X), probe.decision_function(X))
    np.testing.assert_allclose(loaded.predict_proba(X), probe.predict_proba(X))
    assert meta.hook_name == "blocks.1.hook_resid_post" and meta.schema_version == 1


def test_load_refuses_other_fingerprint_pickles_and_bad_tensors(tmp_path) -> None:
    X, y, _ = _separable()
    save_probe(LogisticProbe().fit(X, y), tmp_path / "p", _meta("logistic"))
    with pytest.raises(FingerprintMismatchError, match="abc"):
        load_probe(tmp_path / "p.json", fingerprint="other")
    load_probe(tmp_path / "p.json", fingerprint="other", allow_fingerprint_mismatch=True)
    (tmp_path / "p.pkl").write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(InvalidInputError, match="never"):
        load_probe(tmp_path / "p.pkl")
    tensors = load_file(str(tmp_path / "p.safetensors"))
    tensors["coef"] = tensors["coef"][:, :8].copy()
    save_file(tensors, str(tmp_path / "p.safetensors"))
    with pytest.raises(CorruptArtifactError, match="coef"):
        load_probe(tmp_path / "p.json")
    body = json.loads((tmp_path / "p.json").read_text())
    body["kind"] = "svm"
    (tmp_path / "p.json").write_text(json.dumps(body))
    with pytest.raises(CorruptArtifactError, match="kind"):
        load_probe(tmp_path / "p.json")


def test_fast_bootstrap_auroc_equals_rank_based_auroc_per_resample() -> None:
    from probes.metrics import _auroc_resamples, _auroc_rows

    rng = np.random.default_rng(3)
    scores = np.round(rng.normal(size=120), 1)  # many ties
    positive = rng.integers(0, 2, 120).astype(bool)
    idx = rng.integers(0, 120, size=(200, 120))
    np.testing.assert_allclose(
        _auroc_resamples(scores, positive, idx), _auroc_rows(scores[idx], positive[idx]), atol=1e-12
    )


def test_one_strength_fits_it_without_cross_validation() -> None:
    from sklearn.linear_model import LogisticRegression

    X, y, _ = _separable(seed=3)
    probe = LogisticProbe(Cs=(0.05,)).fit(X, y)
    assert probe.C_ == 0.05
    Z = (X - X.mean(0)) / X.std(0)
    reference = LogisticRegression(C=0.05, max_iter=2000).fit(Z, y)
    np.testing.assert_allclose(
        probe.decision_function(X), reference.decision_function(Z), rtol=1e-6, atol=1e-6
    )
    # A grid of several strengths is cross-validated and may pick another one.
    assert LogisticProbe(Cs=(1e-4, 10.0)).fit(X, y).C_ in (1e-4, 10.0)
