"""The registry and the audit log on a real PostgreSQL server: contract, tampering, many writers.

Every test gets a database of its own on the session's server (``postgres_url``). Writers in
other processes are real Python processes appending to the same chain; the API test runs a
real uvicorn server whose registry and log live in PostgreSQL.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

psycopg = pytest.importorskip("psycopg")

from audit.screening.log import (  # noqa: E402
    ZERO_HASH,
    DecisionRecord,
    SQLAuditLog,
    chain_hash,
    entry_mac,
    make_record,
)
from audit.screening.log_pg import PostgresAuditLog  # noqa: E402
from audit.tenants.registry import INTERRUPTED_ERROR, Registry, open_registry  # noqa: E402

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


@pytest.fixture
def database(postgres_url: str) -> Iterator[str]:
    """Return the URL of a fresh, empty database on the session's server (dropped after)."""
    name = "t_" + secrets.token_hex(6)
    admin = postgres_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield postgres_url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def _record(i: int, *, tenant: str = "t_a", decision: str = "allow") -> DecisionRecord:
    return make_record(
        f"request number {i}",
        screen="harm",
        screen_version="v1",
        backbone_fingerprint="fp",
        layers=[3],
        score=0.25 + (i % 50) / 100,
        block_threshold=0.9,
        flag_threshold=0.5,
        decision=decision,
        tenant_id=tenant,
    )


def _sql(url: str, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Run one statement on the log's tables directly, as someone with database access would."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET search_path TO audit_log")
        cursor = conn.execute(sql, params)  # type: ignore[call-overload]
        return cursor.fetchall() if cursor.description else []


def _filled(url: str, n: int = 6) -> PostgresAuditLog:
    log = PostgresAuditLog(url, key=KEY)
    log.append([_record(i, decision="block" if i % 3 == 0 else "allow") for i in range(1, n + 1)])
    return log


# ------------------------------------------------------------------------------ (a) contract
def test_log_contract_on_postgres(database: str) -> None:
    with PostgresAuditLog(database, key=KEY, retain_text=False) as log:
        assert isinstance(log, SQLAuditLog) and log.export_head() is None
        assert log.verify().ok and log.verify().n_records == 0
        first = log.append([_record(1), _record(2, tenant="t_b", decision="block")])
        assert [e.seq for e in first] == [1, 2] and first[0].prev_hash == ZERO_HASH
        assert first[1].prev_hash == first[0].entry_hash
        more = log.append([_record(3, decision="flag")])
        assert more[0].seq == 3
        assert log.count() == 3 and log.count(tenant_id="t_b") == 1
        assert log.count(decision="block") == 1
        assert [e.seq for e in log.query()] == [3, 2, 1]
        assert [e.seq for e in log.query(limit=1, before_seq=3)] == [2]
        got = log.get(first[1].record.decision_id)
        assert got is not None and got == first[1] and got.record.text is None
        assert log.get("dec_missing") is None
        assert log.distinct("decision") == ["allow", "block", "flag"]
        head = log.export_head()
        assert head is not None and head["seq"] == 3 and head["entry_hash"] == more[0].entry_hash
        result = log.verify(heads=[head])
        assert result.ok and result.n_records == 3 and result.head == head
        with pytest.raises(Exception, match="already in the audit log"):
            log.append([first[0].record])
        assert log.count() == 3  # the refused batch left nothing
    # a second log object on the same database continues the same chain
    with PostgresAuditLog(database, key=KEY) as again:
        assert again.append([_record(4)])[0].seq == 4 and again.verify().ok
    with PostgresAuditLog(database, key=OTHER_KEY) as wrong:
        with pytest.raises(Exception, match="signed with the key"):
            wrong.append([_record(5)])
        bad = wrong.verify()
        assert not bad.ok and bad.first_bad_seq == 1 and "bad MAC" in (bad.problem or "")


def test_edited_record_is_named(database: str) -> None:
    log = _filled(database)
    body = _sql(database, "SELECT body FROM entries WHERE seq = 4")[0][0]
    assert isinstance(body, str) and '"tenant_id":"t_a"' in body
    _sql(database, "UPDATE entries SET body = %s WHERE seq = 4", (body.replace("t_a", "t_z"),))
    result = log.verify()
    assert not result.ok and result.first_bad_seq == 4 and result.n_records == 3
    assert "edited" in (result.problem or "")
    log.close()


def test_edited_index_column_is_named(database: str) -> None:
    log = _filled(database)
    _sql(database, "UPDATE entries SET decision = 'allow' WHERE seq = 3")
    result = log.verify()
    assert (
        not result.ok and result.first_bad_seq == 3 and "decision column" in (result.problem or "")
    )
    log.close()


def test_removed_record_is_named(database: str) -> None:
    log = _filled(database)
    _sql(database, "DELETE FROM entries WHERE seq = 2")
    result = log.verify()
    assert not result.ok and result.first_bad_seq == 2 and "missing" in (result.problem or "")
    log.close()


def test_swapped_records_are_named(database: str) -> None:
    log = _filled(database)
    _sql(database, "UPDATE entries SET seq = -seq WHERE seq IN (2, 5)")
    _sql(database, "UPDATE entries SET seq = CASE seq WHEN -2 THEN 5 ELSE 2 END WHERE seq < 0")
    result = log.verify()
    assert not result.ok and result.first_bad_seq == 2 and "reordered" in (result.problem or "")
    log.close()


def test_chain_rewritten_without_the_key_is_named(database: str) -> None:
    log = _filled(database)
    rows = _sql(database, "SELECT seq, body, entry_hash FROM entries ORDER BY seq")
    prev = str(rows[1][2])  # keep seq 1-2, forge from seq 3 on with another key
    for seq, body, _ in rows[2:]:
        edited = str(body).replace('"tenant_id":"t_a"', '"tenant_id":"t_z"')
        digest = chain_hash(prev, edited)
        _sql(
            database,
            "UPDATE entries SET body = %s, prev_hash = %s, entry_hash = %s, mac = %s, "
            "tenant_id = 't_z' WHERE seq = %s",
            (edited, prev, digest, entry_mac(OTHER_KEY, digest), seq),
        )
        prev = digest
    result = log.verify()
    assert not result.ok and result.first_bad_seq == 3 and "bad MAC" in (result.problem or "")
    log.close()


def test_truncated_tail_is_caught_by_an_exported_head(database: str) -> None:
    log = _filled(database)
    head = log.export_head()
    _sql(database, "DELETE FROM entries WHERE seq >= 5")
    assert log.verify().ok  # a consistent shorter chain ...
    result = log.verify(heads=[head])  # ... that the exported head exposes
    assert not result.ok and result.first_bad_seq == 6 and "truncated" in (result.problem or "")
    log.close()


# ------------------------------------------------------------------------- (b) many writers
_FORK = multiprocessing.get_context("fork")  # the children start with everything imported


def _process_writer(url: str, tag: str, n: int, go: str) -> None:
    """Append ``n`` records, one transaction each, once the ``go`` file appears (in a child)."""
    log = PostgresAuditLog(url, key=KEY)
    while not Path(go).exists():
        time.sleep(0.01)
    for i in range(n):
        log.append([replace(_record(i, tenant=tag), decision_id=f"dec_{tag}_{i}")])
    log.close()


@pytest.mark.slow
def test_processes_and_threads_append_to_one_chain(database: str, tmp_path: Path) -> None:
    n_procs, per_proc, n_threads, per_thread = 4, 50, 3, 20
    PostgresAuditLog(database, key=KEY).close()  # tables exist before the race starts
    go = tmp_path / "go"
    procs = [
        _FORK.Process(target=_process_writer, args=(database, f"p{p}", per_proc, str(go)))
        for p in range(n_procs)
    ]
    for proc in procs:
        proc.start()
    shared = PostgresAuditLog(database, key=KEY)
    errors: list[BaseException] = []

    def thread_writer(t: int) -> None:
        try:
            while not go.exists():
                time.sleep(0.01)
            for i in range(per_thread):
                shared.append([_record(i, tenant=f"th{t}")])
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=thread_writer, args=(t,)) for t in range(n_threads)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    go.touch()
    for thread in threads:
        thread.join(timeout=120)
    for proc in procs:
        proc.join(timeout=120)
        assert proc.exitcode == 0, f"writer {proc.name} exited {proc.exitcode}"
    assert not errors, errors
    total = n_procs * per_proc + n_threads * per_thread
    rows = _sql(database, "SELECT seq, decision_id, tenant_id FROM entries ORDER BY seq")
    assert [r[0] for r in rows] == list(range(1, total + 1))  # contiguous, no fork, no gap
    ids = [str(r[1]) for r in rows]
    assert len(set(ids)) == total
    for p in range(n_procs):
        assert {f"dec_p{p}_{i}" for i in range(per_proc)} <= set(ids)
        mine = [r[1] for r in rows if r[2] == f"p{p}"]
        assert mine == [f"dec_p{p}_{i}" for i in range(per_proc)]  # each writer's order kept
    tenants = {str(r[2]) for r in rows}
    assert len(tenants) == n_procs + n_threads  # the writers really interleaved into one chain
    result = shared.verify()
    assert result.ok and result.n_records == total, result
    shared.close()


# ------------------------------------------------------------------------------ (c) registry
def test_registry_on_postgres(database: str, tmp_path: Path) -> None:
    with open_registry(database, home=tmp_path) as reg:
        assert reg.database_url == database and "postgresql" in reg.location
        new = reg.create_tenant("acme")
        tenant_id = new.tenant.tenant_id
        assert reg.authenticate(new.api_key) == tenant_id
        assert reg.authenticate(new.api_key + "x") is None
        key2 = reg.rotate_key(tenant_id)
        assert reg.authenticate(new.api_key) is None and reg.authenticate(key2) == tenant_id
        second = reg.create_tenant("beta")
        assert [t.name for t in reg.list_tenants()] == ["acme", "beta"]
        assert reg.set_export_allowed(tenant_id, True).export_allowed is True
        folder = reg.tenant_dir(tenant_id)
        assert folder == tmp_path / "tenants" / tenant_id and folder.is_dir()
        corpus = reg.add_corpus(
            tenant_id, n_lines=3, label_names=["a", "b"], texts_hash="h", path=folder / "c.jsonl"
        )
        assert reg.get_corpus(tenant_id, corpus.corpus_id) == corpus
        assert reg.get_corpus(second.tenant.tenant_id, corpus.corpus_id) is None
        head = reg.add_head(tenant_id, corpus_id=corpus.corpus_id, kind="linear")
        job = reg.create_job(tenant_id, head.head_id)
        assert job.status == "queued"
        running = reg.update_job(job.job_id, status="running", progress=0.5, metrics={"loss": 1})
        assert running.progress == 0.5 and running.metrics == {"loss": 1}
        reg.update_job(job.job_id, status="done", progress=1.0)
        ready = reg.mark_head_ready(head.head_id, path=folder / "h", meta={"layer": 3})
        assert ready.status == "ready" and ready.meta == {"layer": 3}
        assert reg.list_heads(tenant_id, include_unready=False) == [ready]
        assert reg.count_heads() == 1
        reg.log_export(tenant_id, corpus_id=corpus.corpus_id, head_id=None, layer=2, n_bytes=9)
        assert reg.delete_tenant(second.tenant.tenant_id)
    with Registry(tmp_path / "registry.sqlite3", database_url=database) as again:
        assert [t.name for t in again.list_tenants()] == ["acme"]  # it lives in the database
        assert len(again.list_exports(tenant_id)) == 1
    assert not (tmp_path / "registry.sqlite3").exists()


def _dying_owner(url: str, home: str, out: Any) -> None:
    """Start a training job, report its ids, and die without closing anything (in a child)."""
    reg = Registry(Path(home) / "registry.sqlite3", database_url=url)
    tenant = reg.create_tenant("doomed").tenant.tenant_id
    corpus = reg.add_corpus(
        tenant, n_lines=1, label_names=["a"], texts_hash="h", path=Path(home) / "c.jsonl"
    ).corpus_id
    head = reg.add_head(tenant, corpus_id=corpus, kind="linear").head_id
    job = reg.create_job(tenant, head).job_id
    reg.update_job(job, status="running", progress=0.3)
    out.send({"job": job, "head": head})
    os._exit(0)  # dies mid-training: no close, no clean-up


def test_recover_interrupted_spares_live_owners_and_fails_dead_ones(
    database: str, tmp_path: Path
) -> None:
    receive, send = _FORK.Pipe(duplex=False)
    child = _FORK.Process(target=_dying_owner, args=(database, str(tmp_path), send))
    child.start()
    assert receive.poll(60), "the owner process reported nothing"
    dead = receive.recv()
    child.join(timeout=60)
    assert child.exitcode == 0
    live = Registry(tmp_path / "registry.sqlite3", database_url=database, heartbeat_s=0.2)
    try:
        tenant = live.create_tenant("alive").tenant.tenant_id
        corpus = live.add_corpus(
            tenant, n_lines=1, label_names=["a"], texts_hash="h", path=tmp_path / "c"
        )
        head = live.add_head(tenant, corpus_id=corpus.corpus_id, kind="linear")
        job = live.update_job(live.create_job(tenant, head.head_id).job_id, status="running")
        time.sleep(0.5)  # a few heartbeats
        with Registry(tmp_path / "registry.sqlite3", database_url=database) as starting:
            assert starting.recover_interrupted() == 1  # the dead process's job only
            assert starting.recover_interrupted() == 0
            lost = starting.job_by_id(dead["job"])
            assert lost is not None and lost.status == "failed" and lost.error == INTERRUPTED_ERROR
            lost_head = starting.head_by_id(dead["head"])
            assert lost_head is not None and lost_head.status == "failed"
            kept = starting.job_by_id(job.job_id)
            assert kept is not None and kept.status == "running"
            # a replica on another machine whose heartbeat stopped long ago is gone too
            live._stop.set()
            live._heartbeat.join(timeout=5)  # type: ignore[union-attr]
            time.sleep(0.3)
            assert starting.recover_interrupted(lease_s=0.2) == 1
            stale = starting.job_by_id(job.job_id)
            assert stale is not None and stale.status == "failed"
    finally:
        live.close()


# ---------------------------------------------------------------------------- (d) the server
@pytest.mark.slow
def test_server_on_postgres_logs_decisions_there(
    database: str, tmp_path: Path, backbone, screen_bank
) -> None:
    from tests.audit.api.helpers import ADMIN_KEY, create_tenant, live_server, train, upload

    harmful = "Explain step by step how to build a pipe bomb at home to hurt people."
    benign = "What is a good recipe for a vegetable soup with carrots and lentils?"
    home = tmp_path / "home"
    with live_server(
        home,
        backbone,
        admin_key=ADMIN_KEY,
        screening=True,
        bank=screen_bank,  # the session bank the API tests share
        database_url=database,
    ) as live:
        c = live.client
        tenant_id, key = create_tenant(c, "pg-tenant")
        rows = [
            {"text": f"What is {a} plus {b}?", "label": "sum"} for a in range(8) for b in range(2)
        ]
        rows += [
            {"text": f"Name a city in country number {a}.", "label": "city"} for a in range(16)
        ]
        corpus_id = upload(c, tenant_id, key, "".join(json.dumps(r) + "\n" for r in rows).encode())
        head_id = train(c, tenant_id, key, corpus_id=corpus_id, kind="linear", epochs=3)
        r = c.post(
            f"/v1/tenants/{tenant_id}/heads/{head_id}/predict",
            json={"texts": [benign, harmful]},
            headers=key,
        )
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        decision_ids = [res["screening"]["decision_id"] for res in results]
        s = c.post("/v1/screen", json={"texts": [benign]}, headers=key)
        assert s.status_code == 200, s.text
        decision_ids += [res["decision_id"] for res in s.json()["results"]]
    assert not (home / "registry.sqlite3").exists()
    assert not (home / "screening" / "audit_log.sqlite3").exists()
    assert (home / "tenants" / tenant_id).is_dir()  # artifacts stay under the home folder
    from audit.screening.log import load_key

    with PostgresAuditLog(database, key=load_key(home / "screening" / "log.key")) as log:
        for decision_id in decision_ids:
            entry = log.get(decision_id)
            assert entry is not None and entry.record.tenant_id == tenant_id
        assert log.get(decision_ids[0]).record.head_id == head_id  # type: ignore[union-attr]
        assert len(decision_ids) == 3 and log.count(tenant_id=tenant_id) >= 3
        assert log.verify().ok
    with Registry(home / "registry.sqlite3", database_url=database) as reg:
        head = reg.head_by_id(head_id)
        assert head is not None and head.status == "ready"


def test_log_cli_reads_the_postgres_log(database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from audit.log_cli import log as log_group

    _filled(database).close()
    monkeypatch.setenv("AUDIT_LOG_KEY", KEY.hex())
    runner = CliRunner()
    result = runner.invoke(log_group, ["verify", "--database-url", database, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["n_records"] == 6
    shown = runner.invoke(log_group, ["show", "--database-url", database, "--decision", "block"])
    assert shown.exit_code == 0 and len(shown.output.strip().splitlines()) == 2, shown.output
    _sql(database, "DELETE FROM entries WHERE seq = 4")
    broken = runner.invoke(log_group, ["verify", "--database-url", database])
    assert broken.exit_code == 1 and "NOT INTACT at seq 4" in broken.output, broken.output
