"""Tenant heads scored on a new checkpoint, in the explicit cross-fingerprint mode."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from audit.checkpoint.heads import head_outcomes
from audit.checkpoint.spec import AuditSpecError, HeadsSpec
from audit.tenants.heads import HeadSpec, load_head, validation_metrics
from audit.tenants.registry import Registry
from audit.tenants.service import TenantService
from probes import ActivationStore, Backbone


@pytest.fixture(scope="module")
def tenant_head(tmp_path_factory, backbone: Backbone, sentiment_small):
    """Return (registry, ready head record, corpus rows): a linear sentiment head on MiniLM."""
    folder = tmp_path_factory.mktemp("checkpoint-heads")
    registry = Registry(folder / "registry.sqlite3")
    service = TenantService(registry, backbone, ActivationStore(folder / "store"))
    tenant = registry.create_tenant("acme-reviews").tenant
    names = sentiment_small.label_names
    texts = list(sentiment_small.texts)
    labels = [names[i] for i in sentiment_small.labels]
    body = "".join(
        json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(texts, labels, strict=True)
    )
    try:
        corpus = service.add_corpus(tenant.tenant_id, body.encode())
        record = service.train(tenant.tenant_id, corpus.corpus_id, HeadSpec("linear"))
        yield registry, record, (texts, labels)
    finally:
        service.close()
        registry.close()


def test_validation_metrics_reproduce_the_training_record(backbone: Backbone, tenant_head) -> None:
    _, record, (texts, labels) = tenant_head
    head = load_head(record.path, backbone)
    metrics = validation_metrics(head, backbone, texts, labels)
    assert metrics["n_val"] == head.meta.metrics["n_val"] == 80
    for name in ("val_auroc", "val_accuracy", "val_loss"):
        assert metrics[name] == pytest.approx(head.meta.metrics[name], abs=1e-5), name


def test_head_keeps_its_metric_on_an_unchanged_checkpoint(
    backbone: Backbone, unchanged_checkpoint: Path, tenant_head
) -> None:
    registry, record, _ = tenant_head
    checkpoint = Backbone.load(str(unchanged_checkpoint))
    outcomes = head_outcomes(registry, checkpoint, HeadsSpec(), backbone.fingerprint)
    assert len(outcomes) == 1
    outcome = outcomes[0]
    print(outcome.message(), outcome.details)
    assert outcome.check_id == f"head[{record.tenant_id}/{record.head_id}]::val_auroc"
    assert outcome.passed, outcome.message()
    assert abs(outcome.measured) < 1e-4 and outcome.n == 80
    details = outcome.details
    assert details["cross_fingerprint"] is True and details["metric"] == "val_auroc"
    assert details["head_fingerprint"] == details["checkpoint_fingerprint"] == backbone.fingerprint
    assert details["baseline"] - details["new"] == pytest.approx(outcome.measured)


def test_head_loses_its_metric_on_the_flipped_checkpoint(
    backbone: Backbone, flipped_checkpoint: Path, tenant_head
) -> None:
    registry, record, _ = tenant_head
    checkpoint = Backbone.load(str(flipped_checkpoint))
    spec = HeadsSpec(max_metric_drop=0.05, tenants=[record.tenant_id])
    [outcome] = head_outcomes(registry, checkpoint, spec, backbone.fingerprint)
    print(outcome.message(), outcome.details)
    assert not outcome.passed
    assert outcome.measured > 0.3  # the head now reads the reviews backwards
    assert outcome.details["cross_fingerprint"] is True
    assert outcome.details["head_fingerprint"] == backbone.fingerprint
    assert outcome.details["checkpoint_fingerprint"] == checkpoint.fingerprint
    assert checkpoint.fingerprint != backbone.fingerprint
    assert "expected <= 0.05" in outcome.message()


def test_only_heads_of_the_baseline_fingerprint_are_scored(backbone: Backbone, tenant_head) -> None:
    registry, _, _ = tenant_head
    assert head_outcomes(registry, backbone, HeadsSpec(), "0123456789abcdef") == []
    assert len(head_outcomes(registry, backbone, HeadsSpec())) == 1  # any fingerprint


def test_unknown_tenant_in_the_spec_is_named(backbone: Backbone, tenant_head) -> None:
    registry, _, _ = tenant_head
    with pytest.raises(AuditSpecError, match="t_nobody"):
        head_outcomes(registry, backbone, HeadsSpec(tenants=["t_nobody"]))


def test_broken_head_fails_with_the_reason(backbone: Backbone, tenant_head, tmp_path) -> None:
    registry, record, _ = tenant_head
    broken = tmp_path / "head"
    broken.mkdir()
    for path in Path(str(record.path)).iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    (broken / "head.safetensors").write_bytes(b"not a tensor file")
    registry.mark_head_ready(record.head_id, path=broken, meta=record.meta)
    try:
        [outcome] = head_outcomes(registry, backbone, HeadsSpec())
    finally:
        registry.mark_head_ready(record.head_id, path=str(record.path), meta=record.meta)
    assert not outcome.passed and math.isnan(outcome.measured)
    assert "head.safetensors" in outcome.details["error"]
