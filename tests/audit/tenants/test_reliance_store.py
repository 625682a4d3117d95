"""A head's reliance report stored next to its weights, and its bar chart, on the real MiniLM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from audit.tenants import HeadSpec, NotFoundError, Registry, TenantService
from audit.tenants.reliance import CONTROL, RelianceError
from audit.tenants.reliance_plot import CONCEPT_COLOUR, CONTROL_COLOUR, reliance_figure
from audit.tenants.reliance_store import (
    RELIANCE_FILE,
    RelianceSettings,
    audit_and_save,
    load_reliance,
    report_from_dict,
    save_reliance,
)
from probes import ActivationStore

CHEAP = RelianceSettings(concepts=("toxicity",), max_samples=20, n_controls=1)
ROWS = b"\n".join(
    json.dumps({"text": t, "label": label}).encode()
    for label, words in (("happy", "lovely fine kind warm"), ("angry", "awful vile rude cold"))
    for w in words.split()
    for t in (f"what a {w} day", f"such {w} people", f"a {w} reply", f"so {w} today")
)


@pytest.fixture(scope="module")
def audited(backbone, tmp_path_factory):
    """Return (service, tenant_id, head record, stored audit) for one linear head."""
    root = tmp_path_factory.mktemp("reliance-store")
    registry = Registry(root / "registry.sqlite3")
    service = TenantService(registry, backbone, ActivationStore(root / "store"))
    tenant = registry.create_tenant("acme").tenant
    corpus = service.add_corpus(tenant.tenant_id, ROWS)
    head = service.train(tenant.tenant_id, corpus.corpus_id, HeadSpec("linear", epochs=5))
    stored = audit_and_save(service, tenant.tenant_id, head.head_id, CHEAP)
    yield service, tenant.tenant_id, head, stored
    service.close()
    registry.close()


def test_an_audit_is_stored_with_the_head_and_read_back(audited) -> None:
    _, tenant_id, head, stored = audited
    assert stored.report.head_id == head.head_id and stored.report.tenant_id == tenant_id
    assert [c.name for c in stored.report.concepts] == ["toxicity"]
    assert stored.report.n_controls == 1 and stored.settings == CHEAP
    again = load_reliance(head.path)
    assert again == stored
    assert report_from_dict(stored.report.as_dict()) == stored.report


def test_a_head_never_audited_has_no_report(tmp_path) -> None:
    assert load_reliance(tmp_path) is None


def test_a_damaged_or_newer_file_is_refused_with_the_fix(audited, tmp_path) -> None:
    _, _, head, _ = audited
    (tmp_path / RELIANCE_FILE).write_text("{not json")
    with pytest.raises(RelianceError, match="audit the head again"):
        load_reliance(tmp_path)
    payload = json.loads((Path(head.path) / RELIANCE_FILE).read_text())
    payload["schema_version"] = 99
    (tmp_path / RELIANCE_FILE).write_text(json.dumps(payload))
    with pytest.raises(RelianceError, match="schema_version 99"):
        load_reliance(tmp_path)


def test_auditing_needs_a_ready_head_and_its_corpus(audited) -> None:
    service, tenant_id, _, stored = audited
    with pytest.raises(NotFoundError, match="no ready head 'h_missing'"):
        audit_and_save(service, tenant_id, "h_missing", CHEAP)
    corpus = service.add_corpus(tenant_id, ROWS)
    other = service.train(tenant_id, corpus.corpus_id, HeadSpec("linear", epochs=2))
    assert service.delete_corpus(tenant_id, corpus.corpus_id)
    with pytest.raises(NotFoundError, match=f"corpus {corpus.corpus_id}, which was deleted"):
        audit_and_save(service, tenant_id, other.head_id, CHEAP)
    # A stored report goes with the head's folder.
    save_reliance(stored.report, other.path, CHEAP)
    assert load_reliance(other.path) is not None
    assert service.delete_head(tenant_id, other.head_id)
    assert not Path(other.path, RELIANCE_FILE).exists()


def test_the_figure_has_a_bar_per_concept_and_the_control(audited) -> None:
    report = audited[3].report
    figure = reliance_figure(report)
    (bars,) = figure.data
    assert list(bars.x) == ["toxicity", CONTROL]
    assert list(bars.y) == [report.scores["toxicity"], report.control.score]
    assert list(bars.marker.color) == [CONCEPT_COLOUR, CONTROL_COLOUR]
    (line,) = figure.layout.shapes
    assert line.y0 == line.y1 == report.control.score
