"""TenantService keeps each upload's files apart and validates corpora line by line."""

from __future__ import annotations

import json

import pytest

from audit.tenants.registry import Registry
from audit.tenants.service import CorpusError, TenantService, parse_corpus
from probes import ActivationStore

ROWS = b"\n".join(
    json.dumps({"text": f"review {i}", "label": "pos" if i % 2 else "neg"}).encode()
    for i in range(10)
)


def test_identical_uploads_are_separate_files(backbone, tmp_path) -> None:
    registry = Registry(tmp_path / "registry.sqlite3")
    service = TenantService(registry, backbone, ActivationStore(tmp_path / "store"))
    try:
        tenant = registry.create_tenant("acme").tenant
        first = service.add_corpus(tenant.tenant_id, ROWS)
        second = service.add_corpus(tenant.tenant_id, ROWS)
        assert first.path != second.path and first.texts_hash == second.texts_hash
        assert service.delete_corpus(tenant.tenant_id, first.corpus_id)
        again = service.read_corpus(tenant.tenant_id, second.corpus_id)
        assert again.texts == [f"review {i}" for i in range(10)]
    finally:
        service.close()
        registry.close()


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b'{"text": "a", "label": "x"}\n{"text": "b", "label": "x"}', "at least two labels"),
        (b'{"text": "a", "label": "x"}\n{"text": "b"}', 'Line 2: missing the "label"'),
        (b'{"text": "a", "label": "x"}\n{"text": "  ", "label": "y"}', "Line 2: .*non-empty"),
        (b'{"text": "a", "label": "x"}\n{"text": "\xff", "label": "y"}', "not UTF-8.*line 2"),
        (b"\n\n", "no rows"),
        (b'{"text": "a", "label": "x"}\n[1, 2]', "Line 2: expected a JSON object"),
    ],
)
def test_bad_corpora_name_the_line_and_the_fix(data: bytes, match: str) -> None:
    with pytest.raises(CorpusError, match=match):
        parse_corpus(data)


def test_blank_lines_are_skipped_and_counted() -> None:
    parsed = parse_corpus(ROWS.replace(b"\n", b"\n\n", 3))
    assert len(parsed.texts) == 10 and parsed.n_blank_lines == 3
    assert parsed.label_names == ("neg", "pos")
    plain = parse_corpus(b'{"text": "just text"}', labelled=False)
    assert plain.labels is None and plain.texts == ["just text"]
