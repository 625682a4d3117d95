"""A probe's held-out examples (top, lowest, misclassified) and finding a concept's report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from audit.concept_examples import MAX_TEXT_CHARS, probe_examples
from audit.report import find_report
from probes import ConceptDataset, DatasetProbeResult, sweep_layers

HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def result() -> DatasetProbeResult:
    """Return a sweep on noisy synthetic features, so some held-out rows are misclassified."""
    rng = np.random.default_rng(0)
    n = 200
    labels = np.arange(n) % 2
    X = rng.normal(size=(n, 6))
    X[:, 0] += 1.2 * labels
    texts = [f"text {i}" if i % 7 else f"long text {i} " + "word " * 200 for i in range(n)]
    dataset = ConceptDataset(
        name="toy",
        concept="custom",
        texts=tuple(texts),
        labels=labels,
        label_names=("cold", "warm"),
        source="synthetic",
    )
    split = dataset.split(test_size=0.5, seed=0)
    sweep = sweep_layers(
        {HOOK: X}, labels, split.train, split.test, probe_kinds=("logistic",), n_boot=100,
        progress=False,
    )  # fmt: skip
    return DatasetProbeResult(
        dataset=dataset, split=split, sweep=sweep, pooling="mean", n_truncated=0,
        mean_tokens=2.0, max_tokens=2, extraction_seconds=0.0, forward_passes=0,
        features={HOOK: X},
    )  # fmt: skip


def test_examples_are_held_out_and_ordered_by_the_probe_score(result) -> None:
    ex = probe_examples(result, n=10)
    probe = result.sweep.fitted[("logistic", HOOK)]
    X = result.features[HOOK]
    test = set(result.split.test.tolist())
    p = probe.predict_proba(X)[:, 1]
    held_out_scores = sorted((p[i] for i in test), reverse=True)
    assert (ex.probe, ex.layer, ex.positive) == ("logistic", 0, "warm")
    assert [e.score for e in ex.top] == pytest.approx(held_out_scores[:10], abs=1e-4)
    assert [e.score for e in ex.bottom] == pytest.approx(held_out_scores[::-1][:10], abs=1e-4)
    for e in ex.top + ex.bottom + ex.misclassified:
        assert e.row in test
        assert e.label == result.dataset.label_names[result.dataset.labels[e.row]]
        assert e.predicted == ("warm" if p[e.row] > 0.5 else "cold")
    assert len(ex.misclassified) == 10
    assert all(e.label != e.predicted for e in ex.misclassified)
    confidence = [abs(e.score - 0.5) for e in ex.misclassified]
    assert confidence == sorted(confidence, reverse=True)


def test_texts_are_bounded_and_the_dict_is_json_ready(result) -> None:
    ex = probe_examples(result, n=200)
    rows = {e.row: e.text for e in ex.top}
    assert len(rows) == len(result.split.test)  # n beyond the held-out split gives them all
    cut = [t for row, t in rows.items() if row % 7 == 0]
    assert cut and all(len(t) <= MAX_TEXT_CHARS and t.endswith("…") for t in cut)
    assert all(t == result.dataset.texts[row] for row, t in rows.items() if row % 7)
    assert json.loads(json.dumps(ex.as_dict()))["top"][0]["text"] == ex.top[0].text


def test_find_report_returns_the_newest_covering_report(tmp_path) -> None:
    def write(folder: str, fingerprint: str, concept: str, digest: str) -> None:
        path = tmp_path / folder / "report.json"
        path.parent.mkdir()
        path.write_text(
            json.dumps(
                {
                    "backbone": {"fingerprint": fingerprint},
                    "datasets": [{"name": "d", "concept": concept, "hash": digest}],
                    "results": [],
                }
            )
        )

    write("20260101T000000Z-sentiment", "aaa", "sentiment", "h1")
    write("20260102T000000Z-sentiment", "aaa", "sentiment", "h2")
    write("20260103T000000Z-sentiment", "bbb", "sentiment", "h3")
    (tmp_path / "20260104T000000Z-broken").mkdir()
    (tmp_path / "20260104T000000Z-broken" / "report.json").write_text("{not json")
    found = find_report(tmp_path, "aaa", concept="sentiment")
    assert found is not None and found.parent.name == "20260102T000000Z-sentiment"
    by_hash = find_report(tmp_path, "aaa", dataset_hash="h1")
    assert by_hash is not None and by_hash.parent.name == "20260101T000000Z-sentiment"
    assert find_report(tmp_path, "aaa", concept="truth") is None
    assert find_report(tmp_path, "aaa", dataset_hash="h3") is None  # another backbone's
    assert find_report(tmp_path / "missing", "aaa", concept="sentiment") is None
