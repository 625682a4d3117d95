"""The tamper-evident audit log on real SQLite files: chain, tampering, retention, crashes, CLI."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from audit.screening import log as log_module
from audit.screening.log import (
    CSV_COLUMNS,
    DECISIONS,
    KEY_ENV,
    RECORD_KINDS,
    ZERO_HASH,
    AuditKeyError,
    AuditLog,
    AuditLogError,
    DecisionRecord,
    SQLiteAuditLog,
    chain_hash,
    entry_body,
    entry_mac,
    export_csv,
    iter_entries,
    load_key,
    load_or_create_key,
    make_record,
    new_decision_id,
    request_hash,
)
from probes.errors import CorruptArtifactError, InvalidInputError

WRITER = Path(__file__).with_name("log_writer.py")
KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def _record(i: int = 0, **overrides: object) -> DecisionRecord:
    fields: dict[str, object] = {
        "screen": "harm",
        "screen_version": "v1",
        "backbone_fingerprint": "fp-minilm",
        "layers": [3, 5],
        "score": (i % 10) / 10 + 1 / 3 / 10,  # floats with long expansions must round-trip
        "block_threshold": 0.9,
        "flag_threshold": 0.5,
        "decision": DECISIONS[i % 3],
        "top_tokens": [("tok", 0.1 + 0.2), ("é", -1e-300)],
        "tenant_id": f"t{i % 2}",
        "head_id": None,
        "kind": "request",
        "extra": {"i": i},
    }
    fields.update(overrides)
    text = str(fields.pop("text", f"request number {i}"))
    return make_record(text, **fields)  # type: ignore[arg-type]


@pytest.fixture()
def db(tmp_path: Path) -> Path:
    return tmp_path / "audit_log.sqlite3"


@pytest.fixture()
def audit_log(db: Path) -> Iterator[SQLiteAuditLog]:
    log = SQLiteAuditLog(db, key=KEY)
    yield log
    log.close()


@pytest.fixture()
def filled(audit_log: SQLiteAuditLog) -> SQLiteAuditLog:
    """A log of 6 entries, appended in two batches."""
    audit_log.append([_record(i) for i in range(3)])
    audit_log.append([_record(i) for i in range(3, 6)])
    return audit_log


def _raw(db: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def _body(db: Path, seq: int) -> dict[str, object]:
    return json.loads(str(_raw(db, "SELECT body FROM entries WHERE seq = ?", (seq,))[0][0]))


def _set_body(db: Path, seq: int, body: dict[str, object]) -> str:
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    _raw(db, "UPDATE entries SET body = ? WHERE seq = ?", (text, seq))
    return text


# ------------------------------------------------------------------------------ records
def test_decision_ids_are_unique_across_pool_refills_and_forks() -> None:
    ids = [new_decision_id() for _ in range(2_000)]  # several refills of the random pool
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 28 and i.startswith("dec_") and int(i[4:], 16) >= 0 for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child's next id must not be the parent's next one
        os.write(write, new_decision_id().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    assert child.startswith("dec_") and child != new_decision_id()


def test_make_record_hashes_text_and_drops_it_unless_retained() -> None:
    record = _record(4, text="héllo")
    assert record.decision_id.startswith("dec_") and len(record.decision_id) == 28
    int(record.decision_id[4:], 16)
    assert new_decision_id() != new_decision_id()
    assert record.request_hash == hashlib.sha256("héllo".encode()).hexdigest()
    assert record.request_hash == request_hash("héllo")
    assert record.text is None
    assert _record(4, text="héllo", retain_text=True).text == "héllo"
    assert record.time.endswith("+00:00")
    assert record.top_tokens == [("tok", 0.1 + 0.2), ("é", -1e-300)]
    assert DecisionRecord.from_dict(record.to_dict()) == record


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"decision": "deny"}, "decision must be one of"),
        ({"kind": "chat"}, "kind must be one of"),
        ({"score": float("nan")}, "score must be finite"),
        ({"score": 1.5}, "[0, 1]"),
        ({"block_threshold": float("inf")}, "block_threshold must be finite"),
        ({"layers": ["3"]}, "layers must be integers"),
        ({"top_tokens": [("a", 1.0, 2.0)]}, "top_tokens"),
        ({"extra": {"x": object()}}, "JSON-serialisable"),
        ({"time": "yesterday"}, "ISO-8601"),
    ],
)
def test_bad_record_fields_are_rejected(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _record(0, **overrides)


# ------------------------------------------------------------------------------ append and read
def test_append_chains_entries_and_query_filters_and_get(filled: SQLiteAuditLog, db: Path) -> None:
    assert isinstance(filled, AuditLog)
    everything = filled.query()
    assert [e.seq for e in everything] == [6, 5, 4, 3, 2, 1]  # newest first
    oldest_first = everything[::-1]
    assert oldest_first[0].prev_hash == ZERO_HASH
    for before, entry in zip([None, *oldest_first[:-1]], oldest_first, strict=True):
        expected_prev = ZERO_HASH if before is None else before.entry_hash
        assert entry.prev_hash == expected_prev
        assert entry.entry_hash == chain_hash(expected_prev, entry_body(entry.seq, entry.record))
        assert entry.mac == entry_mac(KEY, entry.entry_hash)
    # what was appended is what is read back, floats bit for bit
    assert [e.record for e in oldest_first] == [_strip(e.record) for e in oldest_first]
    assert oldest_first[1].record.score == 1 / 10 + 1 / 3 / 10
    stored_body = str(_raw(db, "SELECT body FROM entries WHERE seq = 1")[0][0])
    assert stored_body == entry_body(1, oldest_first[0].record)

    assert [e.seq for e in filled.query(tenant_id="t1")] == [6, 4, 2]
    assert [e.seq for e in filled.query(decision="block")] == [6, 3]
    assert [e.seq for e in filled.query(decision="flag", tenant_id="t0")] == [5]
    assert filled.query(screen="other") == []
    assert filled.query(kind="corpus") == []
    assert [e.seq for e in filled.query(limit=2, offset=1)] == [5, 4]
    assert [e.seq for e in filled.query(before_seq=3)] == [2, 1]
    assert filled.count() == 6 and filled.count(tenant_id="t0", decision="allow") == 1
    with pytest.raises(InvalidInputError, match="decision must be one of"):
        filled.query(decision="deny")

    entry = everything[2]
    assert filled.get(entry.record.decision_id) == entry
    assert filled.get("dec_missing") is None
    assert filled.export_head() == {
        "seq": 6,
        "entry_hash": everything[0].entry_hash,
        "mac": everything[0].mac,
        "time": everything[0].record.time,
    }


def _strip(record: DecisionRecord) -> DecisionRecord:
    return DecisionRecord.from_dict(json.loads(json.dumps(record.to_dict())))


def test_time_filters_and_kinds(audit_log: SQLiteAuditLog) -> None:
    audit_log.append(
        [
            _record(0, time="2024-01-01T10:00:00+00:00"),
            _record(1, time="2024-01-02T10:00:00+02:00", kind="generation"),
            _record(2, time="2024-01-03T00:00:00", kind="corpus"),  # naive: UTC
        ]
    )
    assert [e.seq for e in audit_log.query(since="2024-01-02")] == [3, 2]
    assert [e.seq for e in audit_log.query(until="2024-01-02T08:00:00+00:00")] == [1]
    assert [e.seq for e in audit_log.query(since="2024-01-02T08:00:00Z", until="2024-01-03")] == [2]
    assert [e.seq for e in audit_log.query(kind="generation")] == [2]
    assert audit_log.query(kind="corpus")[0].record.time == "2024-01-03T00:00:00.000000+00:00"


def test_duplicate_decision_id_rejects_the_whole_batch(audit_log: SQLiteAuditLog) -> None:
    first = _record(0)
    audit_log.append([first])
    with pytest.raises(InvalidInputError, match="already in the audit log"):
        audit_log.append([_record(1), first])
    assert audit_log.count() == 1
    assert audit_log.append([]) == []
    assert audit_log.verify().ok


def test_iter_entries_pages_and_export_csv(filled: SQLiteAuditLog, tmp_path: Path) -> None:
    assert [e.seq for e in iter_entries(filled, page=4)] == [6, 5, 4, 3, 2, 1]
    assert [e.seq for e in iter_entries(filled, page=2, tenant_id="t0")] == [5, 3, 1]
    out = tmp_path / "sub" / "log.csv"
    assert export_csv(filled, out, decision="block") == 2
    rows = list(csv.DictReader(out.open(newline="", encoding="utf-8")))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [r["seq"] for r in rows] == ["6", "3"]
    entry = filled.query(decision="block")[0]
    assert float(rows[0]["score"]) == entry.record.score
    assert json.loads(rows[0]["top_tokens"]) == [["tok", 0.1 + 0.2], ["é", -1e-300]]
    assert rows[0]["entry_hash"] == entry.entry_hash and rows[0]["text"] == ""
    buffer = io.StringIO()
    assert export_csv(filled, buffer) == 6
    with pytest.raises(InvalidInputError, match="Unknown export filters"):
        export_csv(filled, buffer, tenant="t0")


# ------------------------------------------------------------------------------ verification
def test_verify_intact_log_streams_across_batches(
    filled: SQLiteAuditLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(log_module, "_VERIFY_BATCH", 4)
    result = filled.verify()
    assert result.ok and result.n_records == 6
    assert result.first_bad_seq is None and result.problem is None
    assert result.head == filled.export_head()
    empty = SQLiteAuditLog(Path(str(filled.path) + ".empty"), key=KEY)
    assert empty.verify().ok and empty.verify().head is None and empty.export_head() is None
    empty.close()


def test_verify_names_an_edited_score(filled: SQLiteAuditLog, db: Path) -> None:
    body = _body(db, 3)
    body["record"]["score"] = 0.01  # type: ignore[index]
    _set_body(db, 3, body)
    result = filled.verify()
    assert not result.ok and result.first_bad_seq == 3 and result.n_records == 2
    assert "seq 3" in str(result.problem) and "edited" in str(result.problem)


def test_verify_names_an_edited_index_column(filled: SQLiteAuditLog, db: Path) -> None:
    _raw(db, "UPDATE entries SET decision = 'allow' WHERE seq = 6")
    result = filled.verify()
    assert not result.ok and result.first_bad_seq == 6
    assert "decision column" in str(result.problem)


def test_verify_names_a_removed_record(filled: SQLiteAuditLog, db: Path) -> None:
    _raw(db, "DELETE FROM entries WHERE seq = 3")
    result = filled.verify()
    assert not result.ok and result.first_bad_seq == 3
    assert "seq 3 is missing" in str(result.problem) and "removed" in str(result.problem)


def test_verify_detects_a_removed_first_record(filled: SQLiteAuditLog, db: Path) -> None:
    _raw(db, "DELETE FROM entries WHERE seq = 1")
    result = filled.verify()
    assert not result.ok and result.first_bad_seq == 1 and "removed" in str(result.problem)


def test_verify_detects_reordered_rows(filled: SQLiteAuditLog, db: Path) -> None:
    cols = "body, prev_hash, entry_hash, mac, decision_id, time, tenant_id, decision, screen, kind"
    two = _raw(db, f"SELECT {cols} FROM entries WHERE seq = 2")[0]
    four = _raw(db, f"SELECT {cols} FROM entries WHERE seq = 4")[0]
    _raw(db, "UPDATE entries SET decision_id = 'swap' || seq WHERE seq IN (2, 4)")
    assignments = ", ".join(f"{c} = ?" for c in cols.split(", "))
    _raw(db, f"UPDATE entries SET {assignments} WHERE seq = 2", four)
    _raw(db, f"UPDATE entries SET {assignments} WHERE seq = 4", two)
    result = filled.verify()
    assert not result.ok and result.first_bad_seq == 2
    assert "reordered" in str(result.problem)


def test_verify_detects_a_chain_rewritten_without_the_key(filled: SQLiteAuditLog, db: Path) -> None:
    body = _body(db, 4)
    body["record"]["decision"] = "allow"  # type: ignore[index]
    _set_body(db, 4, body)
    _raw(db, "UPDATE entries SET decision = 'allow' WHERE seq = 4")
    # the attacker recomputes every hash from seq 4 on, but cannot compute the MACs
    prev = str(_raw(db, "SELECT entry_hash FROM entries WHERE seq = 3")[0][0])
    for seq in range(4, 7):
        text = str(_raw(db, "SELECT body FROM entries WHERE seq = ?", (seq,))[0][0])
        digest = hashlib.sha256(bytes.fromhex(prev) + text.encode()).hexdigest()
        _raw(
            db,
            "UPDATE entries SET prev_hash = ?, entry_hash = ?, mac = ? WHERE seq = ?",
            (prev, digest, entry_mac(OTHER_KEY, digest), seq),
        )
        prev = digest
    result = filled.verify()
    assert not result.ok and result.first_bad_seq == 4
    assert "bad MAC" in str(result.problem)


def test_verify_detects_a_broken_link_and_an_unparseable_row(
    filled: SQLiteAuditLog, db: Path
) -> None:
    _raw(db, "UPDATE entries SET prev_hash = ? WHERE seq = 1", ("1" * 64,))
    result = filled.verify()
    assert result.first_bad_seq == 1 and "broken hash link" in str(result.problem)
    _raw(db, "UPDATE entries SET prev_hash = ? WHERE seq = 1", (ZERO_HASH,))
    assert filled.verify().ok
    _raw(db, "UPDATE entries SET body = ? WHERE seq = 5", (b"\x00binary",))
    result = filled.verify()
    assert result.first_bad_seq == 5 and "unparseable" in str(result.problem)
    _raw(db, "UPDATE entries SET body = '{not json' WHERE seq = 5")
    result = filled.verify()
    assert result.first_bad_seq == 5 and "unparseable" in str(result.problem)
    with pytest.raises(AuditLogError, match="seq 5"):
        filled.query()


def test_truncated_tail_is_detected_only_with_an_exported_head(
    filled: SQLiteAuditLog, db: Path
) -> None:
    early = filled.export_head()
    assert early is not None and early["seq"] == 6
    filled.append([_record(6), _record(7)])
    late = filled.export_head()
    assert late is not None and late["seq"] == 8
    assert filled.verify(heads=[early, late]).ok
    _raw(db, "DELETE FROM entries WHERE seq >= 7")
    assert filled.verify().ok  # a consistent, shorter chain: undetectable without a head
    result = filled.verify(heads=[early, late])
    assert not result.ok and result.first_bad_seq == 8 and result.n_records == 6
    assert "truncated" in str(result.problem) and "seq 8" in str(result.problem)


def test_a_rewrite_with_the_key_is_caught_by_an_exported_head(filled: SQLiteAuditLog) -> None:
    head = filled.export_head()
    assert head is not None
    # someone holding the key rebuilds the whole log with one decision changed
    forged_path = Path(str(filled.path) + ".forged")
    forged = SQLiteAuditLog(forged_path, key=KEY)
    records = [e.record for e in reversed(filled.query())]
    records[1] = DecisionRecord.from_dict({**records[1].to_dict(), "decision": "allow"})
    forged.append(records)
    assert forged.verify().ok
    result = forged.verify(heads=[head])
    assert not result.ok and result.first_bad_seq == 6
    assert "no longer matches the exported head" in str(result.problem)
    forged.close()
    with pytest.raises(InvalidInputError, match="seq"):
        filled.verify(heads=[{"entry_hash": "x"}])


# ------------------------------------------------------------------------------ text retention
def _file_bytes(db: Path) -> bytes:
    return b"".join(
        p.read_bytes() for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")) if p.exists()
    )


@pytest.mark.parametrize("retain", [False, True])
def test_text_reaches_the_file_only_when_retained(tmp_path: Path, retain: bool) -> None:
    db = tmp_path / f"retain-{retain}.sqlite3"
    secret = "the plaintext request zq81x"
    log = SQLiteAuditLog(db, key=KEY, retain_text=retain)
    # the caller asked to keep the text; only the log's setting decides
    log.append([_record(0, text=secret, retain_text=True)])
    entry = log.query()[0]
    assert entry.record.text == (secret if retain else None)
    assert entry.record.request_hash == request_hash(secret)
    assert (secret.encode() in _file_bytes(db)) is retain  # while open: the WAL holds it
    assert log.verify().ok
    log.close()
    assert (secret.encode() in _file_bytes(db)) is retain  # after the checkpoint


# ------------------------------------------------------------------------------ durability
def _writer(db: Path, n_batches: int, batch_size: int, tag: str) -> subprocess.Popen[str]:
    env = {**os.environ, KEY_ENV: KEY.hex()}
    return subprocess.Popen(
        [sys.executable, str(WRITER), str(db), str(n_batches), str(batch_size), tag],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_acknowledged_records_survive_kill_9(db: Path) -> None:
    proc = _writer(db, 0, 5, "crash")  # appends until killed
    watchdog = threading.Timer(20, proc.kill)  # a hung writer fails the test, never hangs it
    watchdog.start()
    acknowledged: list[str] = []
    try:
        assert proc.stdout is not None
        while len(acknowledged) < 40:
            line = proc.stdout.readline()
            if not line:
                break
            acknowledged.append(line.strip())
        assert len(acknowledged) >= 40, proc.stderr.read() if proc.stderr else ""
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    log = SQLiteAuditLog(db, key=KEY)
    try:
        missing = [d for d in acknowledged if log.get(d) is None]
        assert missing == []
        result = log.verify()
        assert result.ok, result.problem
        assert result.n_records >= len(acknowledged)
    finally:
        log.close()


def test_concurrent_processes_and_threads_build_one_chain(db: Path) -> None:
    procs = [_writer(db, 6, 5, f"proc{i}") for i in range(2)]
    shared = SQLiteAuditLog(db, key=KEY)
    second = SQLiteAuditLog(db, key=KEY)

    def work(log: SQLiteAuditLog, tag: int) -> Callable[[], None]:
        def run() -> None:
            for batch in range(5):
                log.append([_record(100 * tag + 10 * batch + i) for i in range(3)])

        return run

    threads = [
        threading.Thread(target=work(log, t)) for t, log in enumerate([shared] * 2 + [second])
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = []
    for proc in procs:
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        ids += out.split()
    assert len(ids) == 60
    assert shared.count() == 60 + 45
    assert all(shared.get(d) is not None for d in ids)
    result = shared.verify()
    assert result.ok, result.problem
    assert result.n_records == 105
    shared.close()
    second.close()


# ------------------------------------------------------------------------------ the key
def test_key_is_created_private_reused_and_overridden(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    path = tmp_path / "keys" / "log.key"
    key = load_or_create_key(path)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == key.hex()
    assert load_or_create_key(path) == key
    assert load_key(path) == key
    assert [p.name for p in path.parent.iterdir()] == ["log.key"]  # no temporary file left
    monkeypatch.setenv(KEY_ENV, OTHER_KEY.hex())
    assert load_or_create_key(path) == OTHER_KEY
    assert load_key(tmp_path / "absent.key") == OTHER_KEY


def test_default_key_lives_under_audit_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.setenv("AUDIT_HOME", str(tmp_path))
    log = SQLiteAuditLog()
    log.append([_record(0)])
    assert log.path == tmp_path / "screening" / "audit_log.sqlite3"
    assert (tmp_path / "screening" / "log.key").read_text().strip() == log.key.hex()
    log.close()


@pytest.mark.parametrize("bad", ["not hex at all", "abcd", "zz" * 32])
def test_bad_keys_are_rejected_with_a_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    path = tmp_path / "log.key"
    path.write_text(bad)
    with pytest.raises(AuditKeyError, match=r"not 32 or more bytes of hex.*secrets.token_hex"):
        load_or_create_key(path)
    monkeypatch.setenv(KEY_ENV, bad)
    with pytest.raises(AuditKeyError, match=KEY_ENV):
        load_or_create_key(tmp_path / "other.key")
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(AuditKeyError, match="No audit-log key"):
        load_key(tmp_path / "absent.key")
    with pytest.raises(AuditKeyError, match="32 or more bytes"):
        SQLiteAuditLog(tmp_path / "x.sqlite3", key=b"short")


def test_a_different_key_fails_verification_and_cannot_append(
    filled: SQLiteAuditLog, db: Path
) -> None:
    other = SQLiteAuditLog(db, key=OTHER_KEY)
    result = other.verify()
    assert not result.ok and result.first_bad_seq == 1
    assert "bad MAC" in str(result.problem) and "not the key this log was" in str(result.problem)
    with pytest.raises(AuditLogError, match="signed with the key of id"):
        other.append([_record(9)])
    other.close()
    assert filled.verify().ok


def test_newer_schema_is_refused(db: Path) -> None:
    SQLiteAuditLog(db, key=KEY).close()
    _raw(db, "UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(CorruptArtifactError, match="schema_version '99'.*Upgrade"):
        SQLiteAuditLog(db, key=KEY)


def test_closed_log_refuses_work(db: Path) -> None:
    log = SQLiteAuditLog(db, key=KEY)
    log.close()
    log.close()
    with pytest.raises(AuditLogError, match="closed"):
        log.append([_record(0)])
    with pytest.raises(AuditLogError, match="closed"):
        log.verify()


# ------------------------------------------------------------------------------ the CLI
@pytest.fixture()
def cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., Result]:
    from audit.log_cli import log as log_group

    monkeypatch.setenv(KEY_ENV, KEY.hex())
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(log_group, list(args), catch_exceptions=False)

    return invoke


def test_cli_choices_match_the_library() -> None:
    from audit.log_cli import DECISION_CHOICES, KIND_CHOICES

    assert DECISION_CHOICES == DECISIONS and KIND_CHOICES == RECORD_KINDS


def test_cli_verify_show_export_and_heads(
    cli: Callable[..., Result], filled: SQLiteAuditLog, db: Path, tmp_path: Path
) -> None:
    ok = cli("verify", "--db", str(db))
    assert ok.exit_code == 0 and "ok: 6 records intact" in ok.output
    as_json = cli("verify", "--db", str(db), "--json")
    data = json.loads(as_json.output)
    assert data["ok"] is True and data["n_records"] == 6 and data["head"]["seq"] == 6

    shown = cli("show", "--db", str(db), "--tenant", "t1", "--limit", "2")
    lines = shown.output.splitlines()
    assert shown.exit_code == 0 and len(lines) == 3 and "2 of 3 shown" in lines[-1]
    shown = cli("show", "--db", str(db), "--decision", "block", "--json")
    data = json.loads(shown.output)
    assert data["total"] == 2 and [e["seq"] for e in data["entries"]] == [6, 3]
    assert data["entries"][0]["record"]["decision"] == "block"
    assert "no matching" in cli("show", "--db", str(db), "--screen", "none").output

    out_csv = tmp_path / "export.csv"
    exported = cli("export", "--db", str(db), "--csv", str(out_csv), "--tenant", "t0")
    assert exported.exit_code == 0 and "wrote 3 records" in exported.output
    rows = list(csv.DictReader(out_csv.open(newline="", encoding="utf-8")))
    assert [r["seq"] for r in rows] == ["5", "3", "1"] and {r["tenant_id"] for r in rows} == {"t0"}

    heads = tmp_path / "elsewhere" / "heads.jsonl"
    assert cli("export-head", "--db", str(db), "--out", str(heads)).exit_code == 0
    filled.append([_record(6)])
    assert cli("export-head", "--db", str(db), "--out", str(heads)).exit_code == 0
    lines = heads.read_text().splitlines()
    assert [json.loads(line)["seq"] for line in lines] == [6, 7]
    printed = cli("export-head", "--db", str(db))
    assert json.loads(printed.output)["seq"] == 7
    assert cli("verify", "--db", str(db), "--heads", str(heads)).exit_code == 0

    _raw(db, "DELETE FROM entries WHERE seq = 7")
    assert cli("verify", "--db", str(db)).exit_code == 0
    bad = cli("verify", "--db", str(db), "--heads", str(heads))
    assert bad.exit_code == 1 and "NOT INTACT at seq 7" in bad.output
    assert "truncated" in bad.output
    bad = cli("verify", "--db", str(db), "--heads", str(heads), "--json")
    assert bad.exit_code == 1 and json.loads(bad.output)["first_bad_seq"] == 7

    body = _body(db, 2)
    body["record"]["score"] = 0.5  # type: ignore[index]
    _set_body(db, 2, body)
    bad = cli("verify", "--db", str(db))
    assert bad.exit_code == 1 and "seq 2 was edited" in bad.output


def test_cli_errors_are_one_line(
    cli: Callable[..., Result],
    filled: SQLiteAuditLog,
    db: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    missing = cli("verify", "--db", str(tmp_path / "none.sqlite3"))
    assert missing.exit_code == 1 and "No audit log at" in missing.output
    assert not (tmp_path / "none.sqlite3").exists()
    bad_heads = tmp_path / "heads.jsonl"
    bad_heads.write_text("{oops\n")
    result = cli("verify", "--db", str(db), "--heads", str(bad_heads))
    assert result.exit_code == 1 and "Line 1 of the heads file" in result.output
    monkeypatch.setenv(KEY_ENV, OTHER_KEY.hex())
    result = cli("verify", "--db", str(db))
    assert result.exit_code == 1 and "bad MAC" in result.output
    monkeypatch.delenv(KEY_ENV)
    result = cli("verify", "--db", str(db), "--key-file", str(tmp_path / "absent.key"))
    assert result.exit_code == 1 and "No audit-log key" in result.output
    key_file = tmp_path / "right.key"
    key_file.write_text(KEY.hex())
    assert cli("verify", "--db", str(db), "--key-file", str(key_file)).exit_code == 0
    empty = tmp_path / "empty.sqlite3"
    SQLiteAuditLog(empty, key=KEY).close()
    result = cli("export-head", "--db", str(empty))
    assert result.exit_code == 1 and "is empty" in result.output
