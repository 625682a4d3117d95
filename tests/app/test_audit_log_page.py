"""The audit log page on a real SQLite log: filters, chain verification, tampering, CSV export."""

from __future__ import annotations

import io
import sqlite3
from datetime import date
from pathlib import Path

import pytest
from streamlit.runtime.memory_media_file_storage import _calculate_file_id

from audit.screening.log import (
    KEY_ENV,
    SQLiteAuditLog,
    default_log_path,
    iter_matching,
    make_record,
    write_csv,
)

KEY = bytes(range(32))
RECORDS = [  # (tenant, decision, score, time)
    ("acme", "allow", 0.02, "2026-03-01T09:00:00+00:00"),
    ("acme", "block", 0.97, "2026-03-01T10:00:00+00:00"),
    ("globex", "flag", 0.41, "2026-03-02T11:00:00+00:00"),
    ("globex", "allow", 0.03, "2026-03-02T12:00:00+00:00"),
    ("acme", "flag", 0.55, "2026-03-03T13:00:00+00:00"),
]


@pytest.fixture
def log_home(tmp_path, monkeypatch) -> Path:
    """Return an AUDIT_HOME holding a real audit log of five decisions by two tenants."""
    home = tmp_path / "home"
    monkeypatch.setenv("AUDIT_HOME", str(home))
    monkeypatch.setenv(KEY_ENV, KEY.hex())
    with SQLiteAuditLog(default_log_path(), key=KEY) as log:
        log.append(
            [
                make_record(
                    f"request {i}",
                    screen="ensemble_l2_5",
                    screen_version="0123456789abcdef",
                    backbone_fingerprint="f8658b441cebd964",
                    layers=[2, 3, 4, 5],
                    score=score,
                    block_threshold=0.9,
                    flag_threshold=0.3,
                    decision=decision,
                    top_tokens=[("bomb", 1.5), ("how", -0.2)],
                    tenant_id=tenant,
                    head_id=f"h_{tenant}",
                    time=when,
                )
                for i, (tenant, decision, score, when) in enumerate(RECORDS)
            ]
        )
    return home


def _table(app):
    return app.dataframe[0].value


def _csv_file_id(app) -> str:
    url = app.download_button[0].proto.url
    return Path(url).stem


def _expected_csv_id(**filters) -> str:
    buffer = io.StringIO()
    with SQLiteAuditLog(default_log_path()) as log:
        write_csv(iter_matching(log, **filters), buffer)
    return _calculate_file_id(buffer.getvalue().encode("utf-8"), "text/csv", "audit_log.csv")


def test_missing_log_explains_that_serve_writes_it(tmp_path, monkeypatch, open_page) -> None:
    monkeypatch.setenv("AUDIT_HOME", str(tmp_path / "empty-home"))
    app = open_page("audit_log")
    assert not app.exception
    assert app.title[0].value == "Audit log"
    assert "audit serve" in app.info[0].value
    assert not default_log_path().exists()  # the page never creates a log


def test_filters_narrow_the_table_and_the_csv(log_home, open_page) -> None:
    app = open_page("audit_log")
    assert not app.exception
    table = _table(app)
    assert len(table) == len(RECORDS)
    assert app.multiselect(key="tenants").options == ["acme", "globex"]
    assert _csv_file_id(app) == _expected_csv_id()

    app.multiselect(key="tenants").select("globex").run()
    table = _table(app)
    assert list(table["tenant"]) == ["globex", "globex"]
    assert list(table["decision"]) == ["allow", "flag"]  # newest first
    assert set(table["head"]) == {"h_globex"}
    assert _csv_file_id(app) == _expected_csv_id(tenant_ids=["globex"])
    assert _csv_file_id(app) != _expected_csv_id()

    app.multiselect(key="tenants").unselect("globex").select("acme")
    app.multiselect(key="decisions").select("block").select("flag").run()
    table = _table(app)
    assert list(table["decision"]) == ["flag", "block"]
    assert list(table["score"]) == [0.55, 0.97]
    assert _csv_file_id(app) == _expected_csv_id(tenant_ids=["acme"], decisions=["block", "flag"])

    app.date_input(key="days").set_value((date(2026, 3, 1), date(2026, 3, 1))).run()
    table = _table(app)
    assert list(table["time"]) == ["2026-03-01T10:00:00.000000+00:00"]


def test_verify_passes_then_names_the_tampered_record(log_home, open_page) -> None:
    app = open_page("audit_log")
    app.button(key="verify").click().run()
    assert not app.exception
    assert not app.error
    assert f"{len(RECORDS)} records verified" in app.success[0].value

    conn = sqlite3.connect(default_log_path())
    with conn:
        changed = conn.execute(
            "UPDATE entries SET body = replace(body, '\"score\":0.97', '\"score\":0.07') "
            "WHERE seq = 2"
        ).rowcount
    conn.close()
    assert changed == 1

    app = open_page("audit_log")
    assert 0.07 in list(_table(app)["score"])  # the table reads the edited value...
    app.button(key="verify").click().run()
    assert not app.success
    message = app.error[0].value
    assert "seq 2" in message and "edited" in message  # ...and verification catches it
    assert "1 records before it verified intact" in message


def test_an_unreadable_record_still_leaves_verify_to_name_it(log_home, open_page) -> None:
    conn = sqlite3.connect(default_log_path())
    with conn:
        conn.execute("UPDATE entries SET body = '{broken' WHERE seq = 3")
    conn.close()
    app = open_page("audit_log")
    assert not app.exception
    assert "seq 3" in app.error[0].value and "cannot be read" in app.error[0].value
    app.button(key="verify").click().run()
    assert "seq 3 is unparseable" in app.error[-1].value


def test_verify_without_the_key_says_how_to_provide_it(log_home, monkeypatch, open_page) -> None:
    monkeypatch.delenv(KEY_ENV)
    app = open_page("audit_log")
    app.button(key="verify").click().run()
    assert not app.exception
    assert KEY_ENV in app.error[0].value
    assert not app.success
