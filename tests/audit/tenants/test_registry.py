"""The tenant registry on real SQLite files: keys, scoping, deletion, recovery, threads, schema."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from audit.errors import AuditError
from audit.tenants.registry import (
    INTERRUPTED_ERROR,
    SCHEMA_VERSION,
    NotFoundError,
    Registry,
    RegistryError,
    RegistryInputError,
    SchemaVersionError,
)


@pytest.fixture
def registry(tmp_path: Path):
    reg = Registry(tmp_path / "registry.sqlite3")
    yield reg
    reg.close()


def _corpus(reg: Registry, tenant_id: str, name: str = "corpus.jsonl"):
    path = reg.tenant_dir(tenant_id) / name
    path.write_text('{"text": "hello", "label": "pos"}\n')
    return reg.add_corpus(
        tenant_id, n_lines=1, label_names=["neg", "pos"], texts_hash="ab" * 32, path=path
    )


def test_default_path_is_under_audit_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIT_HOME", str(tmp_path / "home"))
    with Registry() as reg:
        assert reg.path == tmp_path / "home" / "registry.sqlite3"
        assert reg.path.exists()
        mode = reg._rows("PRAGMA journal_mode")[0][0]
        assert mode == "wal"
        assert reg._rows("PRAGMA foreign_keys")[0][0] == 1


def test_create_authenticate_rotate_revoke(registry: Registry) -> None:
    tenant, key = registry.create_tenant("  acme-research ")
    assert tenant.name == "acme-research"
    assert tenant.tenant_id.startswith("t_")
    assert tenant.created_at.endswith("+00:00")
    assert not tenant.export_allowed
    assert key.startswith("ak_")
    assert registry.authenticate(key) == tenant.tenant_id

    other, other_key = registry.create_tenant("other")
    assert registry.authenticate(other_key) == other.tenant_id

    new_key = registry.rotate_key(tenant.tenant_id)
    assert new_key != key
    assert registry.authenticate(key) is None
    assert registry.authenticate(new_key) == tenant.tenant_id
    assert registry.authenticate(other_key) == other.tenant_id  # rotation is per tenant

    assert registry.revoke_keys(tenant.tenant_id) == 1
    assert registry.authenticate(new_key) is None
    assert registry.authenticate(other_key) == other.tenant_id
    third_key = registry.rotate_key(tenant.tenant_id)
    assert registry.authenticate(third_key) == tenant.tenant_id

    with pytest.raises(NotFoundError, match="t_000000000000"):
        registry.rotate_key("t_000000000000")


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "ak_",
        "ak__x",
        "Bearer ak_x",
        "ak_0123456789ab",
        "ak_0123456789ab_wrongsecret",
        "ak_zzzzzzzzzzzz_secret",
        "x" * 10_000,
        "ak_0123456789ab_\ud800",
        "ak_0123456789ab_é",
        None,
        123,
    ],
)
def test_malformed_keys_return_none(registry: Registry, bad: object) -> None:
    registry.create_tenant("acme")
    assert registry.authenticate(bad) is None  # type: ignore[arg-type]


def test_tampered_secret_is_refused(registry: Registry) -> None:
    _, key = registry.create_tenant("acme")
    tampered = key[:-1] + ("A" if key[-1] != "A" else "B")
    assert registry.authenticate(tampered) is None
    assert registry.authenticate(key + "x") is None


def test_plaintext_key_never_reaches_the_database_files(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite3"
    reg = Registry(path)
    _, key = reg.create_tenant("acme")
    rotated = reg.rotate_key(reg.list_tenants()[0].tenant_id)
    secrets_ = [key, rotated, key.split("_", 2)[2], rotated.split("_", 2)[2]]
    files = [path, Path(f"{path}-wal")]
    blob = b"".join(f.read_bytes() for f in files if f.exists())
    assert len(blob) > 0
    for secret in secrets_:
        assert secret.encode() not in blob
    reg.close()
    blob = b"".join(f.read_bytes() for f in tmp_path.iterdir() if f.is_file())
    for secret in secrets_:
        assert secret.encode() not in blob
    with Registry(path) as reopened:
        assert reopened.authenticate(rotated) is not None


def test_rows_persist_across_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite3"
    with Registry(path) as reg:
        tenant, key = reg.create_tenant("acme")
        reg.set_export_allowed(tenant.tenant_id, True)
        corpus = _corpus(reg, tenant.tenant_id)
        head = reg.add_head(tenant.tenant_id, corpus_id=corpus.corpus_id, kind="linear")
        job = reg.create_job(tenant.tenant_id, head.head_id)
        reg.update_job(job.job_id, status="done", progress=1.0, metrics={"acc": 0.9})
        ready = reg.mark_head_ready(head.head_id, path="heads/h.safetensors", meta={"layer": 3})
        export = reg.log_export(
            tenant.tenant_id, corpus_id=corpus.corpus_id, head_id=None, layer=2, n_bytes=1024
        )
    with pytest.raises(RegistryError, match="closed"):
        reg.list_tenants()

    with Registry(path) as reg:
        got = reg.get_tenant(tenant.tenant_id)
        assert got is not None and got.export_allowed and got.name == "acme"
        assert reg.authenticate(key) == tenant.tenant_id
        assert reg.get_corpus(tenant.tenant_id, corpus.corpus_id) == corpus
        assert reg.get_corpus(tenant.tenant_id, corpus.corpus_id).label_names == ("neg", "pos")  # type: ignore[union-attr]
        assert reg.get_head(tenant.tenant_id, head.head_id) == ready
        assert ready.status == "ready" and ready.meta == {"layer": 3}
        assert ready.path == "heads/h.safetensors"
        stored_job = reg.get_job(tenant.tenant_id, job.job_id)
        assert stored_job is not None
        assert (stored_job.status, stored_job.progress, stored_job.metrics) == (
            "done",
            1.0,
            {"acc": 0.9},
        )
        assert reg.list_exports() == [export]
        assert reg._rows("SELECT value FROM meta WHERE key = 'schema_version'")[0][0] == str(
            SCHEMA_VERSION
        )


def test_other_tenants_resources_are_invisible(registry: Registry) -> None:
    a, _ = registry.create_tenant("a")
    b, _ = registry.create_tenant("b")
    corpus = _corpus(registry, a.tenant_id)
    head = registry.add_head(a.tenant_id, corpus_id=corpus.corpus_id, kind="mlp")
    job = registry.create_job(a.tenant_id, head.head_id)

    assert registry.get_corpus(b.tenant_id, corpus.corpus_id) is None
    assert registry.get_head(b.tenant_id, head.head_id) is None
    assert registry.get_job(b.tenant_id, job.job_id) is None
    assert registry.list_corpora(b.tenant_id) == []
    assert registry.list_heads(b.tenant_id) == []
    assert registry.get_corpus(a.tenant_id, corpus.corpus_id) == corpus
    assert registry.get_job(a.tenant_id, job.job_id) == job
    assert registry.head_by_id(head.head_id) == head
    assert registry.job_by_id(job.job_id) == job

    # B may not build on, delete or train A's things either.
    with pytest.raises(NotFoundError, match=corpus.corpus_id):
        registry.add_head(b.tenant_id, corpus_id=corpus.corpus_id, kind="mlp")
    with pytest.raises(NotFoundError, match=head.head_id):
        registry.create_job(b.tenant_id, head.head_id)
    assert registry.delete_corpus(b.tenant_id, corpus.corpus_id) is False
    assert registry.delete_head(b.tenant_id, head.head_id) is False
    assert registry.head_by_id(head.head_id) is not None
    assert Path(corpus.path).exists()


def test_heads_list_and_delete(registry: Registry) -> None:
    tenant, _ = registry.create_tenant("acme")
    corpus = _corpus(registry, tenant.tenant_id)
    ready = registry.add_head(tenant.tenant_id, corpus_id=corpus.corpus_id, kind="linear")
    failed = registry.add_head(tenant.tenant_id, corpus_id=corpus.corpus_id, kind="linear")
    folder = registry.tenant_dir(tenant.tenant_id) / "heads" / ready.head_id
    folder.mkdir(parents=True)
    (folder / "weights.safetensors").write_bytes(b"\0" * 8)
    registry.mark_head_ready(ready.head_id, path=folder, meta={})
    marked = registry.mark_head_failed(failed.head_id, "diverged")
    assert marked.status == "failed" and marked.meta == {"error": "diverged"}

    assert [h.head_id for h in registry.list_heads(tenant.tenant_id)] == [
        ready.head_id,
        failed.head_id,
    ]
    assert [h.head_id for h in registry.list_heads(tenant.tenant_id, include_unready=False)] == [
        ready.head_id
    ]
    assert registry.count_heads() == 2
    job = registry.create_job(tenant.tenant_id, ready.head_id)
    assert registry.delete_head(tenant.tenant_id, ready.head_id) is True
    assert not folder.exists()
    assert registry.job_by_id(job.job_id) is None
    assert registry.count_heads(tenant.tenant_id) == 1
    assert registry.delete_head(tenant.tenant_id, ready.head_id) is False
    with pytest.raises(NotFoundError, match="h_missing"):
        registry.mark_head_ready("h_missing", path="x", meta={})
    with pytest.raises(NotFoundError, match="h_missing"):
        registry.mark_head_failed("h_missing", "boom")


def test_delete_corpus_removes_only_files_inside_the_tenant_folder(
    registry: Registry, tmp_path: Path
) -> None:
    tenant, _ = registry.create_tenant("acme")
    inside = _corpus(registry, tenant.tenant_id)
    outside_path = tmp_path / "elsewhere.jsonl"
    outside_path.write_text("{}\n")
    outside = registry.add_corpus(
        tenant.tenant_id, n_lines=1, label_names=[], texts_hash="cd", path=outside_path
    )
    climbing = registry.add_corpus(
        tenant.tenant_id,
        n_lines=1,
        label_names=[],
        texts_hash="ef",
        path=registry.tenant_dir(tenant.tenant_id) / ".." / ".." / "elsewhere.jsonl",
    )
    assert registry.delete_corpus(tenant.tenant_id, inside.corpus_id) is True
    assert not Path(inside.path).exists()
    assert registry.delete_corpus(tenant.tenant_id, climbing.corpus_id) is True
    assert registry.delete_corpus(tenant.tenant_id, outside.corpus_id) is True
    assert outside_path.exists()
    assert registry.list_corpora(tenant.tenant_id) == []


def test_delete_tenant_erases_rows_files_and_keys(registry: Registry) -> None:
    gone, key = registry.create_tenant("gone")
    kept, kept_key = registry.create_tenant("kept")
    corpus = _corpus(registry, gone.tenant_id)
    head = registry.add_head(gone.tenant_id, corpus_id=corpus.corpus_id, kind="linear")
    job = registry.create_job(gone.tenant_id, head.head_id)
    export = registry.log_export(
        gone.tenant_id, corpus_id=corpus.corpus_id, head_id=head.head_id, layer=1, n_bytes=10
    )
    kept_corpus = _corpus(registry, kept.tenant_id)
    folder = registry.tenant_dir(gone.tenant_id)

    assert registry.delete_tenant(gone.tenant_id) is True
    assert registry.authenticate(key) is None
    assert registry.get_tenant(gone.tenant_id) is None
    assert registry.head_by_id(head.head_id) is None
    assert registry.job_by_id(job.job_id) is None
    assert not folder.exists()
    for table in ("api_keys", "corpora", "heads", "jobs"):
        count = registry._rows(
            f"SELECT COUNT(*) FROM {table} WHERE tenant_id = ?", (gone.tenant_id,)
        )
        assert count[0][0] == 0, table
    assert registry.list_exports(gone.tenant_id) == [export]  # the audit trail stays

    assert registry.authenticate(kept_key) == kept.tenant_id
    assert Path(kept_corpus.path).exists()
    assert [t.tenant_id for t in registry.list_tenants()] == [kept.tenant_id]
    assert registry.delete_tenant(gone.tenant_id) is False
    with pytest.raises(NotFoundError):
        registry.tenant_dir(gone.tenant_id)


def test_recover_interrupted_after_a_killed_server(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite3"
    with Registry(path) as reg:
        tenant, _ = reg.create_tenant("acme")
        corpus = _corpus(reg, tenant.tenant_id)
        running = reg.add_head(tenant.tenant_id, corpus_id=corpus.corpus_id, kind="linear")
        queued = reg.add_head(tenant.tenant_id, corpus_id=corpus.corpus_id, kind="linear")
        finished = reg.add_head(tenant.tenant_id, corpus_id=corpus.corpus_id, kind="linear")
        running_job = reg.create_job(tenant.tenant_id, running.head_id)
        queued_job = reg.create_job(tenant.tenant_id, queued.head_id)
        done_job = reg.create_job(tenant.tenant_id, finished.head_id)
        reg.update_job(running_job.job_id, status="running", progress=0.4)
        reg.update_job(done_job.job_id, status="done", progress=1.0)
        reg.mark_head_ready(finished.head_id, path="h", meta={"layer": 1})
        # The server dies here: the connection goes without the training thread finishing.

    with Registry(path) as reg:
        assert reg.recover_interrupted() == 2
        for job_id, head_id in [
            (running_job.job_id, running.head_id),
            (queued_job.job_id, queued.head_id),
        ]:
            job = reg.get_job(tenant.tenant_id, job_id)
            assert job is not None and job.status == "failed" and job.error == INTERRUPTED_ERROR
            head = reg.get_head(tenant.tenant_id, head_id)
            assert head is not None and head.status == "failed"
            assert head.meta["error"] == INTERRUPTED_ERROR
        done = reg.get_job(tenant.tenant_id, done_job.job_id)
        assert done is not None and done.status == "done" and done.error is None
        assert reg.list_heads(tenant.tenant_id, include_unready=False)[0].head_id == (
            finished.head_id
        )
        assert reg.recover_interrupted() == 0


def test_update_job_validates(registry: Registry) -> None:
    tenant, _ = registry.create_tenant("acme")
    corpus = _corpus(registry, tenant.tenant_id)
    head = registry.add_head(tenant.tenant_id, corpus_id=corpus.corpus_id, kind="linear")
    job = registry.create_job(tenant.tenant_id, head.head_id)
    assert job.status == "queued" and job.progress == 0.0
    with pytest.raises(RegistryInputError, match="'finished'"):
        registry.update_job(job.job_id, status="finished")
    with pytest.raises(RegistryInputError, match="1.5"):
        registry.update_job(job.job_id, progress=1.5)
    with pytest.raises(RegistryInputError, match="metrics"):
        registry.update_job(job.job_id, metrics={"w": object()})
    with pytest.raises(NotFoundError, match="j_nope"):
        registry.update_job("j_nope", status="running")
    failed = registry.update_job(job.job_id, status="failed", error="out of memory")
    assert failed.status == "failed" and failed.error == "out of memory"
    assert failed.updated_at >= job.updated_at


def test_concurrent_threads_create_tenants_and_heads(registry: Registry) -> None:
    n_threads, per_thread = 8, 4
    errors: list[BaseException] = []
    keys: list[tuple[str, str]] = []
    barrier = threading.Barrier(n_threads)

    def work() -> None:
        try:
            barrier.wait()
            for i in range(per_thread):
                tenant, key = registry.create_tenant(f"tenant-{threading.get_ident()}-{i}")
                corpus = registry.add_corpus(
                    tenant.tenant_id, n_lines=3, label_names=["a"], texts_hash="00", path="x"
                )
                head = registry.add_head(tenant.tenant_id, corpus_id=corpus.corpus_id, kind="k")
                registry.create_job(tenant.tenant_id, head.head_id)
                assert registry.authenticate(key) == tenant.tenant_id
                keys.append((key, tenant.tenant_id))
        except BaseException as exc:  # collected so the main thread can fail the test
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    total = n_threads * per_thread
    assert len(registry.list_tenants()) == total
    assert registry.count_heads() == total
    assert len({tenant_id for _, tenant_id in keys}) == total
    assert all(registry.authenticate(key) == tenant_id for key, tenant_id in keys)


def test_newer_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite3"
    Registry(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute(
            "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),)
        )
    conn.close()
    with pytest.raises(SchemaVersionError) as info:
        Registry(path)
    message = str(info.value)
    assert str(SCHEMA_VERSION + 1) in message and str(path) in message
    assert "Upgrade" in message
    assert isinstance(info.value, AuditError)


def test_a_file_that_is_not_a_registry_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite3"
    path.write_bytes(b"not a database at all" * 100)
    with pytest.raises(RegistryError, match="registry.sqlite3"):
        Registry(path)


@pytest.mark.parametrize("name", ["", "   ", "x" * 201, "a\nb", None])
def test_bad_tenant_names_are_refused(registry: Registry, name: object) -> None:
    with pytest.raises(RegistryInputError, match="acme-research|control characters") as info:
        registry.create_tenant(name)  # type: ignore[arg-type]
    assert isinstance(info.value, AuditError)
    assert registry.list_tenants() == []


def test_longest_allowed_name_is_accepted(registry: Registry) -> None:
    tenant, _ = registry.create_tenant("x" * 200)
    assert len(tenant.name) == 200


def test_bad_corpus_fields_are_refused(registry: Registry) -> None:
    tenant, _ = registry.create_tenant("acme")
    with pytest.raises(RegistryInputError, match="n_lines"):
        registry.add_corpus(tenant.tenant_id, n_lines=-1, label_names=[], texts_hash="a", path="p")
    with pytest.raises(RegistryInputError, match="label_names"):
        registry.add_corpus(tenant.tenant_id, n_lines=1, label_names="ab", texts_hash="a", path="p")
    with pytest.raises(NotFoundError, match="t_000000000000"):
        registry.add_corpus("t_000000000000", n_lines=1, label_names=[], texts_hash="a", path="p")
    with pytest.raises(RegistryInputError, match="not a tenant id"):
        registry._tenant_path("../../etc")
