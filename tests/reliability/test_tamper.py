"""Tamper evidence of the audit log under random edits, deletions, reorderings and forgeries.

One real SQLiteAuditLog of 48 records (three batches, several tenants, decisions and kinds) is
built per module; every example copies its file, tampers with the copy through sqlite3 directly
(as someone with write access to the file but not the MAC key would) and checks that ``verify``
refuses it and names the earliest affected record. The counts tried / detected per kind of
tampering are printed and written to ``reports/reliability/tamper.json``.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit.screening.log import (
    DECISIONS,
    KEY_ENV,
    RECORD_KINDS,
    SQLiteAuditLog,
    canonical_json,
    entry_mac,
    make_record,
)

KEY = bytes(range(32))
FORGER_KEY = bytes(range(7, 39))  # an attacker's own key: a well-formed MAC, but the wrong one
N_RECORDS = 48
REPORT = Path(__file__).resolve().parents[2] / "reports" / "reliability" / "tamper.json"
COLUMNS = "body, prev_hash, entry_hash, mac, decision_id, time, tenant_id, decision, screen, kind"
RECORD_FIELDS = (
    "score",
    "decision",
    "tenant_id",
    "head_id",
    "block_threshold",
    "flag_threshold",
    "request_hash",
    "time",
    "decision_id",
    "screen",
    "screen_version",
    "backbone_fingerprint",
    "layers",
    "top_tokens",
    "kind",
    "extra",
    "text",
)
ROW_COLUMNS = (
    "prev_hash",
    "entry_hash",
    "mac",
    "decision_id",
    "time",
    "tenant_id",
    "decision",
    "screen",
    "kind",
)

TRIED: Counter[str] = Counter()
DETECTED: Counter[str] = Counter()
NAMED: Counter[str] = Counter()
MISSED: list[dict[str, object]] = []


@dataclass(frozen=True)
class Tampering:
    """One applied tampering: its kind, what was done, and the seq verify must name."""

    kind: str
    detail: str
    first_bad: int
    needs_head: bool = False


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return an intact log file of N_RECORDS records, appended in three batches."""
    path = tmp_path_factory.mktemp("tamper") / "pristine.sqlite3"
    log = SQLiteAuditLog(path, key=KEY)
    rng = random.Random(0)
    per_batch = N_RECORDS // 3
    for batch in range(3):
        records = []
        for j in range(per_batch):
            i = batch * per_batch + j
            records.append(
                make_record(
                    f"request {i}: {'x' * rng.randint(0, 40)}",
                    retain_text=i % 5 == 0,
                    screen="harm" if i % 4 else "ensemble_l2_5",
                    screen_version=f"v{batch}",
                    backbone_fingerprint="fp-minilm",
                    layers=[2, 3, 4, 5][: 1 + i % 4],
                    score=rng.random(),
                    block_threshold=0.9,
                    flag_threshold=0.5,
                    decision=DECISIONS[i % len(DECISIONS)],
                    top_tokens=[("tok", rng.uniform(-1, 1))] if i % 3 else [],
                    tenant_id=None if i % 7 == 0 else f"tenant{i % 3}",
                    head_id=f"h{i % 2}" if i % 6 == 0 else None,
                    kind=RECORD_KINDS[i % len(RECORD_KINDS)],
                    extra={"i": i, "note": "é" * (i % 2)},
                )
            )
        log.append(records)
    assert log.verify().ok and log.verify().n_records == N_RECORDS
    log.close()  # checkpoints the WAL into the main file
    return path


@pytest.fixture(scope="module", autouse=True)
def tamper_report() -> Iterator[None]:
    """Print and write the counts of tamperings tried and detected once the module has run."""
    started = time.perf_counter()
    yield
    if not TRIED:
        return
    report = {
        "n_records": N_RECORDS,
        "tried": sum(TRIED.values()),
        "detected": sum(DETECTED.values()),
        "named_first_bad_record": sum(NAMED.values()),
        "by_kind": {
            kind: {"tried": TRIED[kind], "detected": DETECTED[kind], "named": NAMED[kind]}
            for kind in sorted(TRIED)
        },
        "missed": MISSED[:20],
        "seconds": round(time.perf_counter() - started, 2),
    }
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(
        f"\naudit-log tampering: {report['detected']}/{report['tried']} detected, "
        f"{report['named_first_bad_record']} naming the first bad record; written to {REPORT}"
    )


# ------------------------------------------------------------------------------ helpers
def _copy(pristine: Path, folder: Path) -> Path:
    target = folder / "log.sqlite3"
    for suffix in ("-wal", "-shm"):
        Path(str(target) + suffix).unlink(missing_ok=True)
    shutil.copyfile(pristine, target)
    return target


def _sql(db: Path, statements: list[tuple[str, tuple[object, ...]]]) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("BEGIN")
        for sql, params in statements:
            conn.execute(sql, params)
        conn.execute("COMMIT")
    finally:
        conn.close()


def _row(db: Path, seq: int) -> tuple[object, ...]:
    conn = sqlite3.connect(db)
    try:
        return tuple(
            conn.execute(f"SELECT {COLUMNS} FROM entries WHERE seq = ?", (seq,)).fetchone()
        )
    finally:
        conn.close()


def _other(value: object, rng: random.Random) -> object:
    """Return a value of a record field that differs from ``value``, keeping a plausible type."""
    if isinstance(value, bool) or value is None:
        return "forged"
    if isinstance(value, float):
        return value / 2 + 0.01 if value > 0.02 else value + 0.25
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        if value in DECISIONS:
            return rng.choice([d for d in DECISIONS if d != value])
        if value in RECORD_KINDS:
            return rng.choice([k for k in RECORD_KINDS if k != value])
        if len(value) == 64 and all(c in "0123456789abcdef" for c in value):  # a sha256
            return hashlib.sha256(value.encode()).hexdigest()
        return value[:-1] + ("X" if not value.endswith("X") else "Y") if value else "X"
    if isinstance(value, list):
        return value[:-1] if value else [0]
    if isinstance(value, dict):
        return {**value, "forged": True}
    raise AssertionError(f"unexpected field value {value!r}")


def _edit_record_field(db: Path, seq: int, rng: random.Random, rehash: str) -> Tampering:
    """Change one field of the signed JSON record; optionally recompute its hash (and MACs)."""
    body = json.loads(str(_row(db, seq)[0]))
    name = rng.choice(RECORD_FIELDS)
    body["record"][name] = _other(body["record"][name], rng)
    text = canonical_json(body)
    statements: list[tuple[str, tuple[object, ...]]] = [
        ("UPDATE entries SET body = ? WHERE seq = ?", (text, seq))
    ]
    if rehash != "none":  # recompute the edited entry's hash (and its MAC under a forger's key)
        prev = str(_row(db, seq)[1])
        digest = hashlib.sha256(bytes.fromhex(prev) + text.encode()).hexdigest()
        statements.append(
            (
                "UPDATE entries SET entry_hash = ?, mac = ? WHERE seq = ?",
                (digest, entry_mac(FORGER_KEY, digest), seq),
            )
        )
        if rehash == "chain":  # and relink every later entry, as a forger without the key would
            for later in range(seq + 1, N_RECORDS + 1):
                later_body = str(_row(db, later)[0])
                later_digest = hashlib.sha256(
                    bytes.fromhex(digest) + later_body.encode()
                ).hexdigest()
                statements.append(
                    (
                        "UPDATE entries SET prev_hash = ?, entry_hash = ?, mac = ? WHERE seq = ?",
                        (digest, later_digest, entry_mac(FORGER_KEY, later_digest), later),
                    )
                )
                digest = later_digest
    _sql(db, statements)
    return Tampering(f"edit_record_{rehash}", f"seq {seq} record.{name}", seq)


def _edit_column(db: Path, seq: int, rng: random.Random) -> Tampering:
    """Change one stored column of a row (an index column, a hash, the MAC or the link)."""
    column = rng.choice(ROW_COLUMNS)
    current = _row(db, seq)[COLUMNS.split(", ").index(column)]
    if column == "tenant_id" and current is not None and rng.random() < 0.3:
        new: object = None
    elif column == "time":
        new = str(current).replace("20", "19", 1)
    else:
        new = _other(current, rng)
    if column == "decision_id":
        new = f"{new}-forged"
    _sql(db, [(f"UPDATE entries SET {column} = ? WHERE seq = ?", (new, seq))])
    return Tampering("edit_column", f"seq {seq} column {column}: {current!r} -> {new!r}", seq)


def _delete(db: Path, seq: int) -> Tampering:
    _sql(db, [("DELETE FROM entries WHERE seq = ?", (seq,))])
    where = "first" if seq == 1 else "last" if seq == N_RECORDS else "middle"
    return Tampering(f"delete_{where}", f"deleted seq {seq}", seq, needs_head=seq == N_RECORDS)


def _swap(db: Path, a: int, b: int) -> Tampering:
    """Exchange the whole contents of two rows (their seqs stay): a reordering."""
    first, second = _row(db, a), _row(db, b)
    assignments = ", ".join(f"{c} = ?" for c in COLUMNS.split(", "))
    _sql(
        db,
        [
            ("UPDATE entries SET decision_id = 'swap-' || seq WHERE seq IN (?, ?)", (a, b)),
            (f"UPDATE entries SET {assignments} WHERE seq = ?", (*second, a)),
            (f"UPDATE entries SET {assignments} WHERE seq = ?", (*first, b)),
        ],
    )
    return Tampering("swap", f"swapped seq {a} and seq {b}", min(a, b))


def _forged_row(db: Path, seq: int, template: int, prev: str, rng: random.Random) -> tuple:
    body = json.loads(str(_row(db, template)[0]))
    record = body["record"]
    record["decision_id"] = f"forged-{rng.getrandbits(32):08x}"
    record["decision"] = "allow"
    body["seq"] = seq
    text = canonical_json(body)
    digest = hashlib.sha256(bytes.fromhex(prev) + text.encode()).hexdigest()
    return (
        seq,
        text,
        prev,
        digest,
        entry_mac(FORGER_KEY, digest),
        record["decision_id"],
        record["time"],
        record["tenant_id"],
        record["decision"],
        record["screen"],
        record["kind"],
    )


def _insert(db: Path, position: int, rng: random.Random) -> Tampering:
    """Insert a well-formed forged row (hash-linked, MAC'd with a forger's key) at ``position``.

    ``position`` N_RECORDS + 1 appends it; a smaller one shifts every later row up by one first.
    """
    template = rng.randint(1, N_RECORDS)
    prev = str(_row(db, position - 1)[2]) if position > 1 else "0" * 64
    row = _forged_row(db, position, template, prev, rng)
    statements: list[tuple[str, tuple[object, ...]]] = []
    if position <= N_RECORDS:  # make room: every later row moves up one seq
        statements += [
            ("UPDATE entries SET seq = -seq WHERE seq >= ?", (position,)),
            ("UPDATE entries SET seq = 1 - seq WHERE seq < 0", ()),
        ]
    placeholders = ", ".join("?" * 11)
    statements.append((f"INSERT INTO entries (seq, {COLUMNS}) VALUES ({placeholders})", row))
    _sql(db, statements)
    kind = "insert_end" if position == N_RECORDS + 1 else "insert_middle"
    return Tampering(kind, f"forged row inserted at seq {position}", position)


def _insert_before_first(db: Path, rng: random.Random) -> Tampering:
    """Insert a forged row at seq 0, before the genuine first record."""
    row = _forged_row(db, 0, rng.randint(1, N_RECORDS), "0" * 64, rng)
    placeholders = ", ".join("?" * 11)
    _sql(db, [(f"INSERT INTO entries (seq, {COLUMNS}) VALUES ({placeholders})", row)])
    return Tampering("insert_seq_0", "forged row inserted at seq 0", 0)


def _move(db: Path, seq: int, rng: random.Random) -> Tampering:
    """Renumber one row to a seq beyond the end of the log."""
    target = N_RECORDS + rng.randint(1, 5)
    _sql(db, [("UPDATE entries SET seq = ? WHERE seq = ?", (target, seq))])
    return Tampering("renumber", f"seq {seq} renumbered to {target}", seq)


TAMPERINGS: dict[str, Callable[[Path, random.Random], Tampering]] = {
    "edit_record": lambda db, r: _edit_record_field(db, r.randint(1, N_RECORDS), r, "none"),
    "edit_record_rehash": lambda db, r: _edit_record_field(db, r.randint(1, N_RECORDS), r, "one"),
    "edit_record_rechain": lambda db, r: _edit_record_field(
        db, r.randint(1, N_RECORDS), r, "chain"
    ),
    "edit_column": lambda db, r: _edit_column(db, r.randint(1, N_RECORDS), r),
    "delete": lambda db, r: _delete(db, r.choice([1, N_RECORDS, r.randint(2, N_RECORDS - 1)])),
    "swap": lambda db, r: _swap(db, *sorted(r.sample(range(1, N_RECORDS + 1), 2))),
    "insert": lambda db, r: _insert(db, r.choice([N_RECORDS + 1, r.randint(1, N_RECORDS)]), r),
    "insert_seq_0": _insert_before_first,
    "renumber": lambda db, r: _move(db, r.randint(1, N_RECORDS), r),
}


# ------------------------------------------------------------------------------ tests
@settings(
    max_examples=250,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(kind=st.sampled_from(sorted(TAMPERINGS)), seed=st.integers(0, 2**32 - 1))
def test_any_tampering_is_detected_and_names_the_first_bad_record(
    pristine: Path, tmp_path: Path, kind: str, seed: int
) -> None:
    db = _copy(pristine, tmp_path)
    with SQLiteAuditLog(db, key=KEY) as log:
        head = log.export_head()
    tampering = TAMPERINGS[kind](db, random.Random(seed))
    TRIED[tampering.kind] += 1
    with SQLiteAuditLog(db, key=KEY) as log:
        # The exported head is always given: it is what makes a removed tail detectable, and it
        # must never mask an earlier fault.
        result = log.verify(heads=[head] if head is not None else [])
    if not result.ok:
        DETECTED[tampering.kind] += 1
    named = not result.ok and result.first_bad_seq == tampering.first_bad
    named = named and f"seq {tampering.first_bad}" in str(result.problem)
    if named:
        NAMED[tampering.kind] += 1
    else:
        MISSED.append(
            {
                "kind": tampering.kind,
                "detail": tampering.detail,
                "expected_first_bad": tampering.first_bad,
                "verify": result.to_dict(),
            }
        )
    assert not result.ok, f"undetected: {tampering.detail}"
    assert result.first_bad_seq == tampering.first_bad, (tampering.detail, result.problem)
    assert f"seq {tampering.first_bad}" in str(result.problem), (tampering.detail, result.problem)
    assert result.n_records == max(tampering.first_bad - 1, 0)


def test_a_removed_last_record_needs_the_exported_head(pristine: Path, tmp_path: Path) -> None:
    db = _copy(pristine, tmp_path)
    with SQLiteAuditLog(db, key=KEY) as log:
        head = log.export_head()
    _delete(db, N_RECORDS)
    with SQLiteAuditLog(db, key=KEY) as log:
        assert log.verify().ok  # a consistent, shorter chain: only a kept head reveals it
        result = log.verify(heads=[head] if head is not None else [])
    assert not result.ok and result.first_bad_seq == N_RECORDS
    assert "truncated" in str(result.problem)


def test_cli_verify_exits_non_zero_and_names_the_record(
    pristine: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from audit.log_cli import log as log_group

    monkeypatch.setenv(KEY_ENV, KEY.hex())
    runner = CliRunner()
    db = _copy(pristine, tmp_path)
    assert runner.invoke(log_group, ["verify", "--db", str(db)]).exit_code == 0
    rng = random.Random(17)
    tamperings = [
        _edit_record_field(db, 17, rng, "none"),
        _swap(db, 30, 9),
    ]
    first = min(t.first_bad for t in tamperings)
    result = runner.invoke(log_group, ["verify", "--db", str(db)], catch_exceptions=False)
    assert result.exit_code == 1
    assert f"NOT INTACT at seq {first}:" in result.output
    assert f"({first - 1} records before it verified intact)" in result.output
    as_json = runner.invoke(log_group, ["verify", "--db", str(db), "--json"])
    assert as_json.exit_code == 1
    data = json.loads(as_json.output)
    assert data["ok"] is False and data["first_bad_seq"] == first


def test_a_gap_of_several_records_names_its_first_missing_seq(
    pristine: Path, tmp_path: Path
) -> None:
    db = _copy(pristine, tmp_path)
    with SQLiteAuditLog(db, key=KEY) as log:
        head = log.export_head()
    _move(db, N_RECORDS, random.Random(0))  # the last record jumps past the end: a gap of >= 1
    _sql(db, [("UPDATE entries SET seq = ? WHERE seq > ?", (N_RECORDS + 3, N_RECORDS))])
    with SQLiteAuditLog(db, key=KEY) as log:
        result = log.verify(heads=[head] if head is not None else [])
    assert not result.ok
    assert result.first_bad_seq == N_RECORDS
    assert f"seq {N_RECORDS} to seq {N_RECORDS + 2}" in str(result.problem), result.problem
