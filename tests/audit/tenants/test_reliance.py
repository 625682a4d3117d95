"""The concept-reliance audit on the real MiniLM: heads rely on what they were trained on.

Every head reads ``blocks.4.hook_resid_post`` (a blocks head with k=1 reads it too), so the
concept datasets are extracted once for the whole module.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from audit.tenants.heads import Head, HeadSpec, PooledHead, train_head
from audit.tenants.reliance import (
    CONTROL,
    RelianceError,
    audit_head,
    concept_directions,
)
from probes import ActivationStore, Backbone, load_dataset
from probes.hooks import resid_post

HOOK = resid_post(4)
CONCEPTS = ("sentiment", "truth")
MAX_SAMPLES = 100  # per bundled concept dataset: 400 texts in all
N_CONTROLS = 2


def _labels(dataset) -> list[str]:
    return [dataset.label_names[i] for i in dataset.labels]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> ActivationStore:
    return ActivationStore(tmp_path_factory.mktemp("reliance-store"))


@pytest.fixture(scope="module")
def reviews(backbone: Backbone, store: ActivationStore):
    """Return 300 Rotten Tomatoes reviews (not the concept probe's subsample), stored."""
    dataset = load_dataset("rotten_tomatoes", max_samples=300, seed=1)
    # Pooled and per-token inputs in one forward: linear and blocks heads both train from it.
    store.get(backbone, list(dataset.texts), [HOOK], ("mean", "tokens"), progress=False)
    return dataset


@pytest.fixture(scope="module")
def cities(backbone: Backbone, store: ActivationStore):
    dataset = load_dataset("cities", max_samples=200, seed=1)
    store.get(backbone, list(dataset.texts), [HOOK], ("mean",), progress=False)
    return dataset


def _train(backbone, store, dataset, spec: HeadSpec) -> Head:
    return train_head(
        backbone,
        store,
        list(dataset.texts),
        _labels(dataset),
        spec,
        tenant_id="t_test",
        head_id=f"h_{dataset.name}_{spec.kind}",
        progress=False,
    )


def _audit(backbone, store, head, texts, **kwargs):
    return audit_head(
        backbone,
        store,
        head,
        texts,
        concepts=CONCEPTS,
        max_samples=MAX_SAMPLES,
        n_controls=N_CONTROLS,
        **kwargs,
    )


@pytest.fixture(scope="module")
def sentiment_head(backbone, store, reviews) -> Head:
    return _train(backbone, store, reviews, HeadSpec(kind="linear", layer=4))


@pytest.fixture(scope="module")
def sentiment_report(backbone, store, reviews, sentiment_head):
    return _audit(backbone, store, sentiment_head, list(reviews.texts))


def test_sentiment_head_relies_on_sentiment(sentiment_report) -> None:
    report = sentiment_report
    scores = report.scores
    print(report.summary_line())
    assert report.kind == "linear" and report.method == "leace" and report.n_texts == 300
    assert scores["sentiment"] > 0.1
    assert scores["sentiment"] > 3 * scores["truth"]
    assert scores["sentiment"] > 3 * report.control.score
    by_name = {c.name: c for c in report.concepts}
    # The weights point along the sentiment probe, not the truth probe.
    assert by_name["sentiment"].weight_cosine > 3 * by_name["truth"].weight_cosine
    assert report.direction_source == "folded linear weights"
    line = report.summary_line()
    assert line.startswith("relies on: sentiment 0.") and f"({CONTROL} " in line
    payload = json.loads(json.dumps(report.as_dict()))
    assert payload["scores"] == scores and payload["control"]["name"] == CONTROL
    assert payload["schema_version"] == 1 and payload["n_controls"] == N_CONTROLS


def test_erasing_sentiment_changes_the_sentiment_heads_outputs(sentiment_report) -> None:
    by_name = {c.name: c for c in sentiment_report.concepts}
    control = sentiment_report.control
    assert by_name["sentiment"].fraction_flipped > 0.08
    assert by_name["sentiment"].mean_abs_change > 0.06
    assert by_name["sentiment"].mean_abs_change > 2 * control.mean_abs_change
    assert by_name["sentiment"].fraction_flipped > 2 * control.fraction_flipped


def test_truth_head_relies_on_truth(backbone, store, cities) -> None:
    head = _train(backbone, store, cities, HeadSpec(kind="linear", layer=4))
    report = _audit(backbone, store, head, list(cities.texts))
    print(report.summary_line())
    scores = report.scores
    assert scores["truth"] > 0.1
    assert scores["truth"] > 3 * scores["sentiment"]
    assert scores["truth"] > 3 * report.control.score
    by_name = {c.name: c for c in report.concepts}
    assert by_name["truth"].weight_cosine > 3 * by_name["sentiment"].weight_cosine


def _head_reading(direction: np.ndarray, d_model: int, like: Head) -> Head:
    """Return a two-class linear head whose logit difference is ``direction`` . x exactly."""
    module = PooledHead(d_model, 2)
    with torch.no_grad():
        module.net.weight.copy_(torch.stack([torch.zeros(d_model), torch.tensor(direction)]))
        module.net.bias.zero_()
    return Head(like.meta.model_copy(update={"head_id": "h_synthetic"}), module)


def test_erasing_the_direction_a_head_reads_removes_all_of_its_variation(
    backbone, store, reviews, sentiment_head
) -> None:
    found = concept_directions(
        backbone, store, HOOK, "mean", CONCEPTS, max_samples=MAX_SAMPLES, n_controls=N_CONTROLS
    )
    u = found.concepts["sentiment"].mean_difference.astype(np.float32)
    reads_u = _head_reading(u, backbone.d_model, sentiment_head)
    noise = np.random.default_rng(0).standard_normal(backbone.d_model).astype(np.float32)
    blind = _head_reading(noise - (noise @ u) * u, backbone.d_model, sentiment_head)
    texts = list(reviews.texts)
    reading = _audit(backbone, store, reads_u, texts, method="mean_difference")
    assert reading.scores["sentiment"] > 0.999
    by_name = {c.name: c for c in reading.concepts}
    assert by_name["sentiment"].mean_difference_cosine > 0.999
    not_reading = _audit(backbone, store, blind, texts, method="mean_difference")
    assert not_reading.scores["sentiment"] < 1e-6
    assert {c.name: c for c in not_reading.concepts}["sentiment"].fraction_flipped == 0.0


def test_blocks_head_gets_a_report(backbone, store, reviews) -> None:
    head = _train(backbone, store, reviews, HeadSpec(kind="blocks", k=1, epochs=1))
    assert head.input_hook == HOOK
    report = _audit(backbone, store, head, list(reviews.texts), max_texts=120)
    print(report.summary_line())
    assert report.kind == "blocks" and report.n_texts == 120 and report.pooling == "mean"
    assert report.direction_source is None
    for score in (*report.concepts, report.control):
        assert 0.0 <= score.score <= 1.0
        assert score.weight_cosine is None and score.mean_difference_cosine is None
    # The erasure reaches the copied block: the head's outputs move.
    assert {c.name: c for c in report.concepts}["sentiment"].mean_abs_change > 0.0
    json.dumps(report.as_dict())


def test_second_audit_runs_no_forward(backbone, store, reviews, sentiment_head) -> None:
    from audit.tenants import reliance

    texts = list(reviews.texts)
    before = backbone.n_forward_passes
    again = _audit(backbone, store, sentiment_head, texts)  # cached directions, stored inputs
    assert backbone.n_forward_passes == before
    assert again.scores == _audit(backbone, store, sentiment_head, texts).scores
    # Without the in-memory cache (a new process) the concept rows come from the store.
    reliance.clear_cache()
    for concept in CONCEPTS:
        reliance._concept_rows(backbone, store, HOOK, "mean", concept, MAX_SAMPLES, 0, False)
    assert backbone.n_forward_passes == before


def test_bad_requests_are_refused_by_name(backbone, store, reviews, sentiment_head) -> None:
    texts = list(reviews.texts)[:10]
    with pytest.raises(RelianceError, match="Unknown concept"):
        audit_head(backbone, store, sentiment_head, texts, concepts=("sentiment", "honesty"))
    with pytest.raises(RelianceError, match="Unknown method"):
        audit_head(backbone, store, sentiment_head, texts, method="ablate")
    with pytest.raises(RelianceError, match="at least 2 texts"):
        audit_head(backbone, store, sentiment_head, texts[:1], concepts=CONCEPTS)
