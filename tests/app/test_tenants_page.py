"""The tenants page on a real registry in a temporary AUDIT_HOME and the real MiniLM backbone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from audit.tenants import HeadSpec, Registry, TenantService
from audit.tenants.reliance import CONTROL
from audit.tenants.reliance_store import load_reliance
from probes import ActivationStore

LIKED = ("sunsets", "puppies", "music", "gardens", "holidays", "friends", "cake", "books")
HATED = ("traffic", "mosquitoes", "taxes", "toothaches", "queues", "spam", "mud", "noise")


def mood_corpus() -> str:
    """Return 48 JSONL rows in two plainly separable moods."""
    rows = []
    for template in ("I really love {}", "{} make me so happy", "what wonderful {}"):
        rows += [{"text": template.format(t), "label": "happy"} for t in LIKED]
    for template in ("I really hate {}", "{} make me so angry", "what awful {}"):
        rows += [{"text": template.format(t), "label": "angry"} for t in HATED]
    return "\n".join(json.dumps(r) for r in rows)


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """Return an empty AUDIT_HOME the page (and the library it calls) works in."""
    folder = tmp_path / "home"
    monkeypatch.setenv("AUDIT_HOME", str(folder))
    return folder


@pytest.fixture
def registry(home):
    with Registry(home / "registry.sqlite3") as opened:
        yield opened


def by_label(widgets, label: str):
    matches = [w for w in widgets if w.label == label]
    assert len(matches) == 1, [w.label for w in widgets]
    return matches[0]


def plotly_specs(app) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in app.get("plotly_chart")]


def test_empty_registry_explains_and_creates_a_tenant(home, registry, open_page) -> None:
    app = open_page("tenants")
    assert not app.exception
    assert [t.value for t in app.title] == ["Tenants"]
    assert "No tenants yet" in app.info[0].value
    by_label(app.text_input, "Tenant name").set_value("acme-research")
    by_label(app.button, "Create tenant").click()
    app.run()
    assert not app.exception and not app.error
    key = app.code[0].value
    assert "shown only once" in app.warning[0].value
    (tenant,) = registry.list_tenants()
    assert tenant.name == "acme-research"
    assert registry.authenticate(key) == tenant.tenant_id
    table = app.dataframe[0].value
    assert list(table["tenant"]) == [tenant.tenant_id] and list(table["name"]) == [tenant.name]
    assert by_label(app.selectbox, "Tenant").value == tenant.tenant_id
    assert not app.info or "No tenants yet" not in app.info[0].value
    app.run()  # any later run: the key is gone for good
    assert not app.code and not app.warning


def test_training_from_a_pasted_corpus_shows_the_ready_head(registry, open_page) -> None:
    tenant = registry.create_tenant("acme").tenant
    app = open_page("tenants")
    assert "No heads yet" in " ".join(i.value for i in app.info)
    by_label(app.text_area, "...or paste it here").set_value(mood_corpus())
    by_label(app.number_input, "Most epochs").set_value(20)
    by_label(app.button, "Train head").click()
    app.run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    (head,) = registry.list_heads(tenant.tenant_id)
    (corpus,) = registry.list_corpora(tenant.tenant_id)
    assert head.status == "ready" and head.kind == "linear" and corpus.n_lines == 48
    metrics = head.meta["metrics"]
    assert metrics["val_accuracy"] >= 0.8
    assert head.head_id in app.success[0].value
    assert f"val_accuracy {metrics['val_accuracy']:.3f}" in app.success[0].value
    heads_table = app.dataframe[2].value  # tenants, corpora, heads
    row = heads_table.set_index("head").loc[head.head_id]
    assert row["status"] == "ready" and row["task"] == "classification" and row["layer"] == 5
    assert row["val_accuracy"] == pytest.approx(metrics["val_accuracy"])
    assert row["backbone fingerprint"] == head.meta["backbone_fingerprint"][:12]
    assert app.dataframe[0].value["heads"].tolist() == [1]
    assert by_label(app.selectbox, "Head for the concept-reliance view").value == head.head_id
    assert "has not been audited yet" in " ".join(i.value for i in app.info)


def test_reliance_bars_are_audited_then_read_from_the_store(
    home, registry, backbone, open_page
) -> None:
    tenant = registry.create_tenant("acme").tenant
    service = TenantService(registry, backbone, ActivationStore())
    try:
        corpus = service.add_corpus(tenant.tenant_id, mood_corpus().encode())
        head = service.train(tenant.tenant_id, corpus.corpus_id, HeadSpec("linear", epochs=10))
    finally:
        service.close()
    app = open_page("tenants")
    assert not app.get("plotly_chart")
    by_label(app.multiselect, "Concepts").set_value(["toxicity"])
    by_label(app.number_input, "Rows per concept dataset").set_value(20)
    by_label(app.number_input, "Random controls").set_value(1)
    by_label(app.button, "Audit concept reliance").click()
    app.run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    stored = load_reliance(head.path)
    assert stored is not None and stored.settings.max_samples == 20
    names = [c.name for c in stored.report.concepts]
    assert names == ["toxicity"]
    (spec,) = plotly_specs(app)
    assert spec["data"][0]["x"] == [*names, CONTROL]
    assert spec["data"][0]["y"][0] == pytest.approx(stored.report.scores["toxicity"])
    assert stored.report.summary_line() in app.caption[0].value
    # A fresh session reads the stored report: the chart is there without auditing again.
    again = open_page("tenants")
    (spec_again,) = plotly_specs(again)
    assert spec_again["data"][0]["x"] == [*names, CONTROL]
    assert load_reliance(head.path).saved_at == stored.saved_at


def test_a_bad_uploaded_corpus_names_the_line(registry, open_page) -> None:
    tenant = registry.create_tenant("acme").tenant
    app = open_page("tenants")
    bad = b'{"text": "a fine day", "label": "happy"}\n{"text": "no label here"}\n'
    app.get("file_uploader")[0].set_value(("bad.jsonl", bad, "application/jsonl"))
    by_label(app.button, "Train head").click()
    app.run()
    assert not app.exception
    (error,) = app.error
    assert error.value.startswith('Reading the corpus failed: Line 2: missing the "label"')
    assert registry.list_corpora(tenant.tenant_id) == []
    assert registry.list_heads(tenant.tenant_id) == []
