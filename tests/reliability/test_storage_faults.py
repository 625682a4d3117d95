"""Storage faults: a full disk, a read-only store, damaged activation shards. Nothing is lost.

The full disk and the read-only store are real: a small tmpfs volume filled to the last byte, and
a read-only bind mount. Mounting needs root (CI runs as root and sets AUDIT_REQUIRE_MOUNT=1, so
those tests fail there rather than skip); SQLite's own "database or disk is full" is also
produced without privileges, by capping the log file's page count.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from audit.api import ApiSettings
from audit.screening.log import SQLiteAuditLog, load_key, make_record
from audit.storage_faults import check_writable, storage_fault
from audit.tenants.heads import load_head
from audit.tenants.registry import REGISTRY_FILENAME, Registry
from probes.errors import InvalidInputError
from tests.audit.api.helpers import ADMIN, ADMIN_KEY, NDJSON, create_tenant, live_server, upload
from tests.reliability.fleet import benign_corpus

SETTINGS = ApiSettings(rate_limit_per_minute=0)


def _run(*command: str) -> bool:
    return subprocess.run(command, capture_output=True).returncode == 0


def _need_mount(ok: bool) -> None:
    if ok:
        return
    if os.environ.get("AUDIT_REQUIRE_MOUNT") == "1":
        pytest.fail("mounting a tmpfs / read-only bind mount failed, and AUDIT_REQUIRE_MOUNT=1")
    pytest.skip("needs root to mount a small tmpfs (set AUDIT_REQUIRE_MOUNT=1 to insist)")


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    """A 48 MiB tmpfs: small enough to fill in a moment."""
    volume = tmp_path / "volume"
    volume.mkdir()
    _need_mount(_run("mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(volume)))
    try:
        yield volume
    finally:
        _run("umount", "-l", str(volume))


def _fill(volume: Path) -> Path:
    """Fill ``volume`` to the last byte; return the ballast file that holds the space."""
    ballast = volume / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            try:
                while os.write(fd, b"\0" * size):
                    pass
            except OSError:
                pass
    finally:
        os.close(fd)
    return ballast


@pytest.fixture(scope="module")
def corpus() -> bytes:
    return benign_corpus(40)


def _decision_ids(response: httpx.Response) -> list[str]:
    body = response.json()
    return [
        r["screening"]["decision_id"] if "screening" in r else r["decision_id"]
        for r in body["results"]
    ]


def _log(home: Path) -> SQLiteAuditLog:
    folder = home / "screening"
    return SQLiteAuditLog(folder / "audit_log.sqlite3", key=load_key(folder / "log.key"))


def _integrity(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def test_a_full_disk_answers_507_then_recovers_with_nothing_lost(
    small_volume: Path, backbone, screen_bank, corpus: bytes
) -> None:
    home = small_volume / "home"
    acknowledged: list[str] = []
    with live_server(
        home, backbone, admin_key=ADMIN_KEY, screening=True, bank=screen_bank, settings=SETTINGS
    ) as live:
        c = live.client
        tenant_id, key = create_tenant(c, "before-full")
        corpus_id = upload(c, tenant_id, key, corpus)
        r = c.post(
            f"/v1/tenants/{tenant_id}/heads",
            json={
                "corpus_id": corpus_id,
                "kind": "linear",
                "epochs": 3,
                "screen_policy": "exclude",
            },
            headers=key,
        )
        assert r.status_code == 202, r.text
        head_id = r.json()["head_id"]
        assert live.state.service.wait(r.json()["job_id"], timeout=120).status == "ready"
        texts = ["How many legs does a spider have?", "Write a poem about the sea."]
        r = c.post("/v1/screen", json={"texts": texts}, headers=key)
        assert r.status_code == 200, r.text
        acknowledged += _decision_ids(r)
        with _log(home) as log:
            logged_before = log.count()

        ballast = _fill(small_volume)
        writes = {
            "screen": lambda: c.post("/v1/screen", json={"texts": texts}, headers=key),
            "predict": lambda: c.post(
                f"/v1/tenants/{tenant_id}/heads/{head_id}/predict",
                json={"texts": texts},
                headers=key,
            ),
            "corpus": lambda: c.post(
                f"/v1/tenants/{tenant_id}/corpora", content=corpus, headers={**key, **NDJSON}
            ),
            "tenant": lambda: c.post("/v1/tenants", json={"name": "while-full"}, headers=ADMIN),
            "train": lambda: c.post(
                f"/v1/tenants/{tenant_id}/heads",
                json={"corpus_id": corpus_id, "kind": "linear", "epochs": 2},
                headers=key,
            ),
        }
        for name, call in writes.items():
            r = call()
            assert r.status_code == 507, (name, r.status_code, r.text)
            error = r.json()["error"]
            assert error["code"] == "storage_full", (name, error)
            assert "free space" in error["message"] and "AUDIT_HOME" in error["message"], error
        # Reads keep working on a full disk.
        assert c.get(f"/v1/tenants/{tenant_id}/heads/{head_id}", headers=key).status_code == 200
        r = c.get(f"/v1/decisions/{acknowledged[0]}", headers=key)
        assert r.status_code == 200 and r.json()["decision_id"] == acknowledged[0], r.text
        with _log(home) as log:
            assert log.count() == logged_before  # no decision was made that was not answered

        ballast.unlink()
        for name, call in writes.items():
            r = call()
            assert r.status_code in (200, 201, 202), (name, r.status_code, r.text)
            if name in ("screen", "predict"):
                acknowledged += _decision_ids(r)
            if name == "train":
                job = live.state.service.wait(r.json()["job_id"], timeout=120)
                assert job.status == "ready"
        names = [t["name"] for t in c.get("/v1/tenants", headers=ADMIN).json()]
        assert names.count("while-full") == 1  # created once, after the space came back

    with _log(home) as log:
        assert log.verify().ok
        assert all(log.get(d) is not None for d in acknowledged)
    assert _integrity(home / "screening" / "audit_log.sqlite3") == "ok"
    assert _integrity(home / REGISTRY_FILENAME) == "ok"
    registry = Registry(home / REGISTRY_FILENAME)
    try:
        for tenant in registry.list_tenants():
            for head in registry.list_heads(tenant.tenant_id):
                if head.status == "ready":  # a ready head always has whole weights
                    assert head.path and load_head(head.path, backbone) is not None
    finally:
        registry.close()


def test_a_read_only_store_stops_the_server_with_one_line(
    tmp_path: Path, backbone, screen_bank
) -> None:
    home = tmp_path / "home"
    with live_server(
        home, backbone, admin_key=ADMIN_KEY, screening=True, bank=screen_bank, settings=SETTINGS
    ) as live:
        tenant_id, key = create_tenant(live.client, "kept")
        r = live.client.post("/v1/screen", json={"texts": ["What is a fjord?"]}, headers=key)
        acknowledged = _decision_ids(r)
    view = tmp_path / "read-only"
    view.mkdir()
    _need_mount(_run("mount", "--bind", str(home), str(view)))
    try:
        _need_mount(_run("mount", "-o", "remount,bind,ro", str(view)))
        with pytest.raises(Exception, match="read-only") as caught:
            check_writable(view)
        assert "remount it read-write" in str(caught.value)
        env = {**os.environ, "AUDIT_HOME": str(view), "AUDIT_ADMIN_KEY": ADMIN_KEY}
        done = subprocess.run(
            [sys.executable, "-m", "audit.cli", "serve", "--port", "9"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 1, done.stderr
        assert "read-only" in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert str(view) in done.stderr
    finally:
        _run("umount", "-l", str(view))
    with _log(home) as log:  # the store it refused to serve is untouched
        assert log.verify().ok and all(log.get(d) is not None for d in acknowledged)


def test_sqlite_full_is_named_and_the_log_stays_whole(tmp_path: Path) -> None:
    """SQLite's own "database or disk is full", reached by capping the file's page count."""

    def record_fields(**extra: object) -> dict[str, object]:
        return {
            "screen": "harm",
            "screen_version": "v1",
            "backbone_fingerprint": "fp",
            "layers": [3],
            "score": 0.5,
            "block_threshold": 0.9,
            "flag_threshold": 0.5,
            "decision": "allow",
            **extra,
        }

    path = tmp_path / "log.sqlite3"
    log = SQLiteAuditLog(path, key=b"k" * 32)
    try:
        first = log.append([make_record("first", **record_fields())])
        conn = log._connection()
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")
        big = [make_record("x", **record_fields(extra={"pad": "y" * 20_000})) for _ in range(8)]
        with pytest.raises(sqlite3.OperationalError) as caught:
            log.append(big)
        fault = storage_fault(caught.value)
        assert fault is not None and fault.kind == "full" and fault.status == 507
        assert log.count() == 1  # the failed batch left nothing behind
        conn.execute("PRAGMA max_page_count = 1073741823")
        log.append([make_record("after", **record_fields())])
        result = log.verify()
        assert result.ok and result.n_records == 2, result
        assert log.get(first[0].record.decision_id) is not None
    finally:
        log.close()


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (OSError(28, "No space left on device", "/x/y"), "full"),
        (OSError(30, "Read-only file system", "/x/y"), "read_only"),
        (OSError(5, "Input/output error"), "io"),
        (RuntimeError("wrapped"), None),
    ],
)
def test_storage_faults_are_found_through_wrapping_errors(
    error: Exception, kind: str | None
) -> None:
    try:
        try:
            raise error
        except Exception as inner:
            raise InvalidInputError("the library's own error") from inner
    except InvalidInputError as outer:
        fault = storage_fault(outer)
    assert (fault.kind if fault else None) == kind
    if fault is not None:
        assert fault.detail and ("/x/y" in fault.detail or fault.kind == "io")


def test_damaged_activation_shards_are_recomputed_by_a_training_job(
    tmp_path: Path, backbone, corpus: bytes
) -> None:
    """A truncated shard and a stale one (older schema) under a tenant's corpus are recomputed."""
    with live_server(tmp_path / "home", backbone, admin_key=ADMIN_KEY, settings=SETTINGS) as live:
        c = live.client
        tenant_id, key = create_tenant(c, "shards")
        corpus_id = upload(c, tenant_id, key, corpus)
        spec = {"corpus_id": corpus_id, "kind": "linear", "epochs": 2, "seed": 3}
        first = c.post(f"/v1/tenants/{tenant_id}/heads", json=spec, headers=key).json()
        assert live.state.service.wait(first["job_id"], timeout=120).status == "ready"
        store = live.state.service.store
        shards = sorted(store.root.rglob("*.safetensors"))
        assert shards, "training stored no activations"
        damaged = shards[0]
        damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
        stale_meta = shards[-1].with_suffix(".json")
        meta = json.loads(stale_meta.read_text())
        meta["schema_version"] = -1
        stale_meta.write_text(json.dumps(meta))
        before_passes, before_bad = backbone.n_forward_passes, store.n_recomputed_corrupt
        again = c.post(f"/v1/tenants/{tenant_id}/heads", json=spec, headers=key).json()
        assert live.state.service.wait(again["job_id"], timeout=120).status == "ready"
        assert store.n_recomputed_corrupt - before_bad >= 1
        assert backbone.n_forward_passes > before_passes  # recomputed, not read
        texts = ["A train leaves at noon; when does it arrive?"]
        r1 = c.post(
            f"/v1/tenants/{tenant_id}/heads/{first['head_id']}/predict",
            json={"texts": texts},
            headers=key,
        ).json()["results"]
        r2 = c.post(
            f"/v1/tenants/{tenant_id}/heads/{again['head_id']}/predict",
            json={"texts": texts},
            headers=key,
        ).json()["results"]
        # Same seed, same corpus: the recomputed activations train the same head.
        np.testing.assert_allclose(
            [r1[0]["scores"][k] for k in sorted(r1[0]["scores"])],
            [r2[0]["scores"][k] for k in sorted(r2[0]["scores"])],
            atol=1e-5,
        )
