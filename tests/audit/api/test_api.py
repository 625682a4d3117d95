"""End to end over HTTP: a real uvicorn server, real MiniLM, real Rotten Tomatoes reviews."""

from __future__ import annotations

import json
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from safetensors.numpy import load as load_safetensors

from audit.api import ApiSettings
from audit.tenants.registry import INTERRUPTED_ERROR, Registry
from tests.audit.api.helpers import (
    ADMIN,
    NDJSON,
    Live,
    World,
    bearer,
    create_tenant,
    live_server,
    train,
    upload,
)

ROUTES = {
    ("post", "/v1/tenants"),
    ("get", "/v1/tenants"),
    ("get", "/v1/tenants/{tenant_id}"),
    ("delete", "/v1/tenants/{tenant_id}"),
    ("put", "/v1/tenants/{tenant_id}/export"),
    ("get", "/v1/tenants/{tenant_id}/export"),
    ("post", "/v1/tenants/{tenant_id}/keys/rotate"),
    ("post", "/v1/tenants/{tenant_id}/keys/revoke"),
    ("post", "/v1/tenants/{tenant_id}/corpora"),
    ("get", "/v1/tenants/{tenant_id}/corpora"),
    ("delete", "/v1/tenants/{tenant_id}/corpora/{corpus_id}"),
    ("post", "/v1/tenants/{tenant_id}/heads"),
    ("get", "/v1/tenants/{tenant_id}/heads"),
    ("get", "/v1/tenants/{tenant_id}/heads/{head_id}"),
    ("delete", "/v1/tenants/{tenant_id}/heads/{head_id}"),
    ("post", "/v1/tenants/{tenant_id}/heads/{head_id}/predict"),
    ("post", "/v1/tenants/{tenant_id}/heads/{head_id}/generate"),
    ("get", "/v1/jobs/{job_id}"),
    ("get", "/healthz"),
}


def _error(r: httpx.Response, status: int, code: str | None = None) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]["message"]


def test_healthz_and_openapi_list_every_route(api: Live, backbone) -> None:
    health = api.client.get("/healthz").json()
    assert health["status"] == "ok"
    assert health["backbone"] == {"name": backbone.name, "fingerprint": backbone.fingerprint}
    assert {"pending_requests", "batches_served", "texts_served"} <= set(health["queue"])
    schema = api.client.get("/openapi.json").json()
    found = {(m, p) for p, ops in schema["paths"].items() for m in ops}
    assert found >= ROUTES, ROUTES - found
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            assert op.get("summary"), (method, path)
    predict = schema["paths"]["/v1/tenants/{tenant_id}/heads/{head_id}/predict"]["post"]
    assert "PredictResponse" in json.dumps(predict["responses"]["200"])
    assert "HTTPBearer" in schema["components"]["securitySchemes"]


def test_train_then_predict_single_and_batch(api: Live, world: World, reviews) -> None:
    c, a = api.client, world.a
    job = c.get(f"/v1/jobs/{a.job_id}", headers=a.key).json()
    assert job["status"] == "done" and job["progress"] == 1.0 and job["error"] is None
    assert 0.0 <= job["metrics"]["val_accuracy"] <= 1.0
    head = c.get(f"/v1/tenants/{a.tenant_id}/heads/{a.head_id}", headers=a.key).json()
    assert head["status"] == "ready" and head["kind"] == "linear"
    assert head["label_names"] == ["negative", "positive"]
    assert "history" not in head["metrics"]
    listed = c.get(f"/v1/tenants/{a.tenant_id}/heads", headers=a.key).json()
    assert [h["head_id"] for h in listed] == [a.head_id]

    url = f"/v1/tenants/{a.tenant_id}/heads/{a.head_id}/predict"
    single = c.post(url, json={"text": reviews.texts[0]}, headers=a.key)
    assert single.status_code == 200, single.text
    (result,) = single.json()["results"]
    assert result["label"] in ("negative", "positive")
    assert abs(sum(result["scores"].values()) - 1.0) < 1e-4
    texts = list(reviews.texts[:20])
    batch = c.post(url, json={"texts": texts}, headers=a.key).json()
    assert batch["head_id"] == a.head_id and len(batch["results"]) == 20
    assert batch["results"][0]["label"] == result["label"]
    truth = [reviews.label_names[y] for y in reviews.labels[:20]]
    hits = sum(r["label"] == y for r, y in zip(batch["results"], truth, strict=True))
    assert hits >= 12  # trained on these very reviews


def test_concurrent_predictions_of_two_tenants_share_batches(
    api: Live, world: World, reviews
) -> None:
    c = api.client
    texts = list(reviews.texts[:16])

    def url(t):
        return f"/v1/tenants/{t.tenant_id}/heads/{t.head_id}/predict"

    # What each text should get, from one sequential batch per tenant.
    expected = {
        t.head_id: c.post(url(t), json={"texts": texts}, headers=t.key).json()["results"]
        for t in (world.a, world.b)
    }
    jobs = [(world.a if i % 2 == 0 else world.b, i) for i in range(16)]
    clients = [httpx.Client(base_url=api.url, timeout=120) for _ in jobs]
    before = c.get("/healthz").json()["queue"]["batches_served"]
    barrier = threading.Barrier(len(jobs))

    def call(i: int) -> httpx.Response:
        tenant, row = jobs[i]
        barrier.wait()
        return clients[i].post(url(tenant), json={"text": texts[row]}, headers=tenant.key)

    try:
        with ThreadPoolExecutor(len(jobs)) as pool:
            answers = list(pool.map(call, range(len(jobs))))
    finally:
        for client in clients:
            client.close()
    for (tenant, row), answer in zip(jobs, answers, strict=True):
        assert answer.status_code == 200, answer.text
        assert answer.json()["head_id"] == tenant.head_id
        (got,) = answer.json()["results"]
        want = expected[tenant.head_id][row]
        assert got["label"] == want["label"]
        assert got["scores"] == pytest.approx(want["scores"], abs=1e-4)
    served = c.get("/healthz").json()["queue"]["batches_served"] - before
    assert served < len(jobs), "concurrent requests should share backbone batches"


def test_tenants_see_only_their_own_things(api: Live, world: World) -> None:
    c, a, b = api.client, world.a, world.b
    missing_tenant = "t_" + "0" * 12
    cases = [
        (f"/v1/tenants/{a.tenant_id}/heads", f"/v1/tenants/{missing_tenant}/heads"),
        (f"/v1/tenants/{a.tenant_id}", f"/v1/tenants/{missing_tenant}"),
        (f"/v1/tenants/{b.tenant_id}/heads/{a.head_id}", f"/v1/tenants/{b.tenant_id}/heads/h_0"),
        (f"/v1/jobs/{a.job_id}", "/v1/jobs/j_000000000000"),
    ]
    for theirs, nothing in cases:
        r1, r2 = c.get(theirs, headers=b.key), c.get(nothing, headers=b.key)
        _error(r1, 404, "not_found")
        assert r1.json() == r2.json(), (theirs, nothing)
    r1 = c.delete(f"/v1/tenants/{b.tenant_id}/corpora/{a.corpus_id}", headers=b.key)
    r2 = c.delete(f"/v1/tenants/{b.tenant_id}/corpora/c_000000000000", headers=b.key)
    assert r1.status_code == 404 and r1.json() == r2.json()
    r = c.post(
        f"/v1/tenants/{b.tenant_id}/heads/{a.head_id}/predict", json={"text": "x"}, headers=b.key
    )
    _error(r, 404)
    r = c.post(f"/v1/tenants/{b.tenant_id}/heads", json={"corpus_id": a.corpus_id}, headers=b.key)
    _error(r, 404)
    # A's things are untouched, and the owner sees them.
    assert c.get(f"/v1/jobs/{a.job_id}", headers=ADMIN).json()["head_id"] == a.head_id
    assert c.get(f"/v1/tenants/{a.tenant_id}/corpora", headers=a.key).json()[0]["corpus_id"] == (
        a.corpus_id
    )
    # Tenant keys cannot use the owner's routes.
    _error(c.get("/v1/tenants", headers=a.key), 403, "admin_only")
    _error(c.post("/v1/tenants", json={"name": "x"}, headers=a.key), 403)
    r = c.put(f"/v1/tenants/{a.tenant_id}/export", json={"allowed": True}, headers=a.key)
    _error(r, 403)
    ids = {t["tenant_id"] for t in c.get("/v1/tenants", headers=ADMIN).json()}
    assert {a.tenant_id, b.tenant_id} <= ids


def test_bad_keys_get_the_same_401_everywhere(api: Live, world: World) -> None:
    c, a = api.client, world.a
    urls = [
        f"/v1/tenants/{a.tenant_id}/heads/{a.head_id}",  # exists
        f"/v1/tenants/{a.tenant_id}/heads/h_000000000000",  # does not
        "/v1/tenants/t_000000000000/heads",
        f"/v1/jobs/{a.job_id}",
        "/v1/jobs/j_000000000000",
        "/v1/tenants",
    ]
    bodies = []
    for url in urls:
        for headers in (
            bearer("ak_0123456789ab_" + "x" * 43),
            bearer("wrong"),
            {"Authorization": "Basic abc"},
            {},
        ):
            r = c.get(url, headers=headers)
            _error(r, 401, "unauthorized")
            assert r.headers["www-authenticate"] == "Bearer"
            bodies.append(r.json())
    assert all(b == bodies[0] for b in bodies)


def test_key_rotation_and_revocation(api: Live) -> None:
    c = api.client
    tenant_id, old = create_tenant(c, "rotating")
    r = c.post(f"/v1/tenants/{tenant_id}/keys/rotate", headers=old)
    assert r.status_code == 200, r.text
    new = bearer(r.json()["api_key"])
    _error(c.get(f"/v1/tenants/{tenant_id}", headers=old), 401)
    assert c.get(f"/v1/tenants/{tenant_id}", headers=new).status_code == 200
    r = c.post(f"/v1/tenants/{tenant_id}/keys/revoke", headers=new)
    assert r.status_code == 200 and r.json()["n_revoked"] == 1
    _error(c.get(f"/v1/tenants/{tenant_id}", headers=new), 401)
    # Only the owner can give it a key again.
    r = c.post(f"/v1/tenants/{tenant_id}/keys/rotate", headers=ADMIN)
    assert c.get(f"/v1/tenants/{tenant_id}", headers=bearer(r.json()["api_key"])).status_code == 200


def test_delete_head_corpus_and_tenant(api: Live, reviews, corpus_bytes: bytes, backbone) -> None:
    c = api.client
    tenant_id, key = create_tenant(c, "short-lived")
    own_rows = corpus_bytes.splitlines(keepends=True)[:24]  # texts no other tenant has
    corpus_id = upload(c, tenant_id, key, b"".join(own_rows))
    head_id = train(c, tenant_id, key, corpus_id=corpus_id, epochs=2)
    folder = api.home / "tenants" / tenant_id
    assert (folder / "heads" / head_id).is_dir()
    (corpus,) = c.get(f"/v1/tenants/{tenant_id}/corpora", headers=key).json()
    shards = api.home / "store" / backbone.fingerprint / corpus["texts_hash"][:32]
    assert shards.is_dir()
    assert c.delete(f"/v1/tenants/{tenant_id}/heads/{head_id}", headers=key).status_code == 204
    assert not (folder / "heads" / head_id).exists()
    _error(c.get(f"/v1/tenants/{tenant_id}/heads/{head_id}", headers=key), 404)
    _error(c.delete(f"/v1/tenants/{tenant_id}/heads/{head_id}", headers=key), 404)
    r = c.post(f"/v1/tenants/{tenant_id}/heads/{head_id}/predict", json={"text": "x"}, headers=key)
    _error(r, 404)
    assert c.delete(f"/v1/tenants/{tenant_id}/corpora/{corpus_id}", headers=key).status_code == 204
    assert c.get(f"/v1/tenants/{tenant_id}/corpora", headers=key).json() == []
    assert not shards.exists()  # activations go with the texts they came from
    upload(c, tenant_id, key, corpus_bytes)  # shared with tenants A and B: their shards stay
    assert c.delete(f"/v1/tenants/{tenant_id}", headers=key).status_code == 204
    assert not folder.exists()
    assert any((api.home / "store" / backbone.fingerprint).iterdir())
    _error(c.get(f"/v1/tenants/{tenant_id}", headers=key), 401)
    _error(c.get(f"/v1/tenants/{tenant_id}", headers=ADMIN), 404)


def test_corpus_uploads_are_validated(api: Live, world: World) -> None:
    c, a = api.client, world.a
    url = f"/v1/tenants/{a.tenant_id}/corpora"
    headers = {**a.key, **NDJSON}
    good = [json.dumps({"text": f"review {i}", "label": ["bad", "good"][i % 2]}) for i in range(6)]
    r = c.post(url, content=("\n\n".join(good) + "\n  \n").encode(), headers=headers)
    assert r.status_code == 201, r.text
    assert r.json()["n_lines"] == 6 and r.json()["n_blank_lines"] == 6
    assert r.json()["label_names"] == ["bad", "good"]
    one_label = "".join(json.dumps({"text": f"t{i}", "label": "pos"}) + "\n" for i in range(5))
    assert "two" in _error(c.post(url, content=one_label, headers=headers), 422, "invalid_input")
    no_label = good[0] + "\n" + json.dumps({"text": "no label here"}) + "\n"
    assert "Line 2" in _error(c.post(url, content=no_label, headers=headers), 422)
    assert "UTF-8" in _error(c.post(url, content=b'{"text": "\xff\xfe"}\n', headers=headers), 422)
    _error(c.post(url, content=b"", headers=headers), 422)
    _error(c.post(url, content=b"not json\n", headers=headers), 422)
    r = c.post(url, content=good[0], headers={**a.key, "Content-Type": "image/png"})
    _error(r, 415, "unsupported_media_type")
    plain = json.dumps({"text": "unlabelled text"}) + "\n"
    r = c.post(
        url + "?labelled=false", content=plain, headers={**a.key, "Content-Type": "text/plain"}
    )
    assert r.status_code == 201 and r.json()["label_names"] == []
    r = c.post(
        f"/v1/tenants/{a.tenant_id}/heads", json={"corpus_id": r.json()["corpus_id"]}, headers=a.key
    )
    assert "labels" in _error(r, 422)


def test_request_size_limits(api: Live, world: World) -> None:
    c, a = api.client, world.a
    url = f"/v1/tenants/{a.tenant_id}/corpora"
    huge = b'{"text": "' + b"x" * (21 * 1024 * 1024) + b'", "label": "a"}\n'
    with httpx.Client(base_url=api.url, timeout=120) as fresh:
        r = fresh.post(url, content=huge, headers={**a.key, **NDJSON})
    assert "max_corpus_bytes" in _error(r, 413, "payload_too_large")

    def chunks():
        for _ in range(22):
            yield b"y" * (1024 * 1024)

    with httpx.Client(base_url=api.url, timeout=120) as fresh:
        r = fresh.post(url, content=chunks(), headers={**a.key, **NDJSON})  # no Content-Length
    _error(r, 413, "payload_too_large")
    predict = f"/v1/tenants/{a.tenant_id}/heads/{a.head_id}/predict"
    r = c.post(predict, json={"texts": ["z" * 1000] * 1100}, headers=a.key)
    assert "max_request_bytes" in _error(r, 413)
    r = c.post(predict, json={"texts": ["short text"] * 257}, headers=a.key)
    assert "max_batch_texts" in _error(r, 413, "too_many_texts")
    r = c.post(predict, json={"text": "w" * 100_001}, headers=a.key)
    assert "max_text_chars" in _error(r, 413, "text_too_long")
    assert c.get("/healthz").status_code == 200  # the server is fine after all that


def test_bad_requests_are_named(api: Live, world: World) -> None:
    c, a = api.client, world.a
    heads = f"/v1/tenants/{a.tenant_id}/heads"
    r = c.post(heads, json={"corpus_id": a.corpus_id, "colour": "blue"}, headers=a.key)
    assert "colour" in _error(r, 422, "invalid_request")
    r = c.post(heads, json={"corpus_id": a.corpus_id, "kind": "forest"}, headers=a.key)
    assert "forest" in _error(r, 422, "invalid_input")
    r = c.post(heads, json={"corpus_id": a.corpus_id, "layer": 9, "epochs": None}, headers=a.key)
    assert "layer" in _error(r, 422)
    r = c.post(
        heads, content=b'{"corpus_id": ', headers={**a.key, "Content-Type": "application/json"}
    )
    _error(r, 400, "malformed_json")
    predict = f"{heads}/{a.head_id}/predict"
    _error(c.post(predict, json={}, headers=a.key), 422)
    _error(c.post(predict, json={"texts": []}, headers=a.key), 422)
    _error(c.post(predict, json={"text": "a", "texts": ["b"]}, headers=a.key), 422)
    assert "empty" in _error(c.post(predict, json={"texts": ["ok", "  "]}, headers=a.key), 422)
    _error(c.get("/v1/nowhere", headers=a.key), 404)


def test_head_not_ready_is_409(api: Live, world: World) -> None:
    a = world.a
    record = api.state.registry.add_head(a.tenant_id, corpus_id=a.corpus_id, kind="linear")
    base = f"/v1/tenants/{a.tenant_id}/heads/{record.head_id}"
    assert api.client.get(base, headers=a.key).json()["status"] == "training"
    r = api.client.post(base + "/predict", json={"text": "fine film"}, headers=a.key)
    assert "training" in _error(r, 409, "head_not_ready")
    r = api.client.post(base + "/generate", json={"prompt": "Once"}, headers=a.key)
    _error(r, 409, "head_not_ready")


def test_generate_needs_a_language_model_head(api: Live, world: World, monkeypatch) -> None:
    a = world.a
    url = f"/v1/tenants/{a.tenant_id}/heads/{a.head_id}/generate"
    r = api.client.post(url, json={"prompt": "The film was"}, headers=a.key)
    assert "task='lm'" in _error(r, 422, "not_lm_head")
    monkeypatch.setitem(sys.modules, "audit.tenants.lm", None)  # as if the module were missing
    r = api.client.post(url, json={"prompt": "The film was"}, headers=a.key)
    _error(r, 409, "lm_unavailable")


def test_export_is_refused_until_allowed_then_logged(api: Live, world: World, backbone) -> None:
    c, a, b = api.client, world.a, world.b
    url = f"/v1/tenants/{a.tenant_id}/export"
    params = {"corpus_id": a.corpus_id, "head_id": a.head_id}
    assert "allow" in _error(c.get(url, params=params, headers=a.key), 403, "export_not_allowed")
    assert api.state.registry.list_exports(a.tenant_id) == []
    for t in (a, b):
        r = c.put(f"/v1/tenants/{t.tenant_id}/export", json={"allowed": True}, headers=ADMIN)
        assert r.status_code == 200 and r.json()["export_allowed"] is True
    _error(c.get(url, params={**params, "corpus_id": "c_000000000000"}, headers=a.key), 404)
    r = c.get(url, params=params, headers=a.key)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    tensors = load_safetensors(r.content)
    assert set(tensors) == {"values", "offsets"}
    offsets = tensors["offsets"]
    assert len(offsets) == 64 + 1 and offsets[-1] == len(tensors["values"])
    assert tensors["values"].shape[1] == backbone.d_model
    (record,) = api.state.registry.list_exports(a.tenant_id)
    assert (record.corpus_id, record.head_id, record.layer) == (a.corpus_id, a.head_id, 5)
    assert record.n_bytes == len(r.content)
    # A blocks head exports its input activations and its own weights.
    r = c.get(
        f"/v1/tenants/{b.tenant_id}/export",
        params={"corpus_id": b.corpus_id, "head_id": b.head_id},
        headers=b.key,
    )
    assert r.status_code == 200, r.text
    tensors = load_safetensors(r.content)
    assert any(name.startswith("head.blocks.0.") for name in tensors)
    assert api.state.registry.list_exports(b.tenant_id)[0].layer == 4
    # Other tenants still get 404, and the owner can switch exports off again.
    _error(c.get(url, params=params, headers=b.key), 404)
    c.put(f"/v1/tenants/{b.tenant_id}/export", json={"allowed": False}, headers=ADMIN)
    r = c.get(f"/v1/tenants/{b.tenant_id}/export", params={"corpus_id": b.corpus_id}, headers=b.key)
    _error(r, 403)


def test_unexpected_errors_are_500_without_internals(api: Live, world: World, monkeypatch) -> None:
    def broken(*_args, **_kwargs):
        raise RuntimeError("secret-internal-detail at /srv/registry")

    monkeypatch.setattr(api.state.registry, "list_corpora", broken)
    r = api.client.get(f"/v1/tenants/{world.a.tenant_id}/corpora", headers=world.a.key)
    message = _error(r, 500, "internal_error")
    assert "secret" not in r.text and "registry" not in message


def test_rate_limit_answers_429_with_retry_after(tmp_path: Path, backbone) -> None:
    settings = ApiSettings(rate_limit_per_minute=3)
    with live_server(
        tmp_path, backbone, admin_key=ADMIN["Authorization"][7:], settings=settings
    ) as live:
        tenant_id, key = create_tenant(live.client, "chatty")
        url = f"/v1/tenants/{tenant_id}/corpora"
        for _ in range(3):
            assert live.client.get(url, headers=key).status_code == 200
        r = live.client.get(url, headers=key)
        assert "rate_limit_per_minute" in _error(r, 429, "rate_limited")
        assert int(r.headers["retry-after"]) >= 1
        assert live.client.get("/v1/tenants", headers=ADMIN).status_code == 200  # owner unlimited
        other_id, other = create_tenant(live.client, "quiet")
        assert live.client.get(f"/v1/tenants/{other_id}", headers=other).status_code == 200


def test_interrupted_training_is_failed_at_startup(tmp_path: Path, backbone, monkeypatch) -> None:
    # A server that died mid-training left a head "training" and its job "running".
    with Registry(tmp_path / "registry.sqlite3") as registry:
        tenant, key = registry.create_tenant("crashed")
        corpus = registry.add_corpus(
            tenant.tenant_id, n_lines=1, label_names=["a", "b"], texts_hash="0" * 64, path="x"
        )
        head = registry.add_head(tenant.tenant_id, corpus_id=corpus.corpus_id, kind="linear")
        job = registry.create_job(tenant.tenant_id, head.head_id)
        registry.update_job(job.job_id, status="running", progress=0.4)
    monkeypatch.delenv("AUDIT_ADMIN_KEY", raising=False)
    with live_server(tmp_path, backbone) as live:
        r = live.client.get(f"/v1/jobs/{job.job_id}", headers=bearer(key))
        assert r.json()["status"] == "failed" and r.json()["error"] == INTERRUPTED_ERROR
        url = f"/v1/tenants/{tenant.tenant_id}/heads/{head.head_id}"
        assert live.client.get(url, headers=bearer(key)).json()["status"] == "failed"
        r = live.client.post(url + "/predict", json={"text": "hello"}, headers=bearer(key))
        _error(r, 409, "head_not_ready")
        # No AUDIT_ADMIN_KEY: the owner routes say how to turn them on.
        r = live.client.post("/v1/tenants", json={"name": "x"}, headers=ADMIN)
        assert "AUDIT_ADMIN_KEY" in _error(r, 503, "admin_disabled")
