"""Heads trained once per session on real data, shared by the tenant tests."""

from __future__ import annotations

import pytest

from audit.tenants.heads import HeadSpec, train_head


@pytest.fixture(scope="session")
def tenant_store(tmp_path_factory):
    from probes import ActivationStore

    return ActivationStore(tmp_path_factory.mktemp("tenant-store"))


@pytest.fixture(scope="session")
def sentiment_rows(sentiment_small):
    texts = list(sentiment_small.texts)
    labels = [sentiment_small.label_names[i] for i in sentiment_small.labels]
    return texts, labels


@pytest.fixture(scope="session")
def trained_heads(backbone, tenant_store, sentiment_rows):
    """One head of each kind on 400 Rotten Tomatoes reviews: linear at two layers, mlp, blocks."""
    texts, labels = sentiment_rows
    specs = {
        "linear_last": HeadSpec("linear"),
        "linear_l2": HeadSpec("linear", layer=2, pooling="max"),
        "mlp": HeadSpec("mlp", layer=4, hidden=32),
        "blocks": HeadSpec("blocks", k=1, epochs=2, batch_size=32),
    }
    return {
        name: train_head(
            backbone,
            tenant_store,
            texts if name != "blocks" else texts[:160],
            labels if name != "blocks" else labels[:160],
            spec,
            tenant_id="t_test",
            head_id=f"h_{name}",
            progress=False,
        )
        for name, spec in specs.items()
    }
