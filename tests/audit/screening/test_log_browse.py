"""Browsing the audit log: filter choices, time span, OR-filters merged newest first, CSV rows."""

from __future__ import annotations

import csv
import io

import pytest

from audit.screening.log import (
    CSV_COLUMNS,
    SQLiteAuditLog,
    export_csv,
    iter_matching,
    make_record,
    write_csv,
)
from probes.errors import InvalidInputError

KEY = bytes(range(32))
ROWS = [  # (tenant, decision, screen, time)
    ("acme", "allow", "harm", "2026-03-01T09:00:00+00:00"),
    (None, "block", "harm", "2026-03-01T10:00:00+00:00"),
    ("globex", "flag", "other", "2026-03-02T11:00:00+00:00"),
    ("acme", "block", "other", "2026-03-03T12:00:00+00:00"),
    ("initech", "allow", "harm", "2026-03-04T13:00:00+00:00"),
]


@pytest.fixture
def log(tmp_path):
    with SQLiteAuditLog(tmp_path / "log.sqlite3", key=KEY) as audit_log:
        audit_log.append(
            [
                make_record(
                    f"text {i}",
                    screen=screen,
                    screen_version="v1",
                    backbone_fingerprint="fp",
                    layers=[4],
                    score=0.1 * i,
                    block_threshold=0.9,
                    flag_threshold=0.5,
                    decision=decision,
                    tenant_id=tenant,
                    time=when,
                )
                for i, (tenant, decision, screen, when) in enumerate(ROWS)
            ]
        )
        yield audit_log


def test_distinct_values_and_time_range(log, tmp_path) -> None:
    assert log.distinct("tenant_id") == ["acme", "globex", "initech"]  # no None
    assert log.distinct("screen") == ["harm", "other"]
    assert log.distinct("decision") == ["allow", "block", "flag"]
    with pytest.raises(InvalidInputError, match="column must be one of"):
        log.distinct("body")
    assert log.time_range() == (
        "2026-03-01T09:00:00.000000+00:00",
        "2026-03-04T13:00:00.000000+00:00",
    )
    with SQLiteAuditLog(tmp_path / "empty.sqlite3", key=KEY) as empty:
        assert empty.time_range() is None
        assert empty.distinct("tenant_id") == []


def test_iter_matching_ors_values_ands_fields_newest_first(log) -> None:
    def seqs(**filters) -> list[int]:
        return [e.seq for e in iter_matching(log, page=2, **filters)]

    assert seqs() == [5, 4, 3, 2, 1]
    assert seqs(tenant_ids=["acme", "globex"]) == [4, 3, 1]
    assert seqs(tenant_ids=["acme", "acme"]) == [4, 1]  # repeats are not doubled
    assert seqs(tenant_ids=["acme", "globex"], decisions=["block", "flag"]) == [4, 3]
    assert seqs(decisions=["allow"], screens=["harm", "other"]) == [5, 1]
    assert seqs(since="2026-03-02T00:00:00+00:00", until="2026-03-04T00:00:00+00:00") == [4, 3]
    with pytest.raises(InvalidInputError, match="decision must be one of"):
        seqs(decisions=["maybe"])


def test_write_csv_matches_export_csv(log) -> None:
    written, exported = io.StringIO(), io.StringIO()
    n = write_csv(iter_matching(log, tenant_ids=["acme"]), written)
    assert n == export_csv(log, exported, tenant_id="acme") == 2
    assert written.getvalue() == exported.getvalue()
    rows = list(csv.reader(io.StringIO(written.getvalue())))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [r[0] for r in rows[1:]] == ["4", "1"]
    assert {r[2] for r in rows[1:]} == {"acme"}
