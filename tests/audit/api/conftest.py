"""Fixtures: one real uvicorn server for the session, and two tenants with trained heads."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from audit.api import ApiSettings
from tests.audit.api.helpers import (
    ADMIN_KEY,
    N_ROWS,
    Live,
    Tenant,
    World,
    create_tenant,
    live_server,
    upload,
    wait_job,
)


@pytest.fixture(scope="session")
def api(tmp_path_factory, backbone) -> Iterator[Live]:
    # A longer gathering window makes concurrent requests share backbone batches reliably.
    # Screening has its own server (test_screening_api.py); this one serves heads unscreened.
    settings = ApiSettings(engine_max_wait_ms=50)
    home = tmp_path_factory.mktemp("api-home")
    with live_server(home, backbone, admin_key=ADMIN_KEY, settings=settings) as live:
        yield live


@pytest.fixture(scope="session")
def reviews():
    from probes import load_dataset

    return load_dataset("rotten_tomatoes", max_samples=N_ROWS, seed=0)


@pytest.fixture(scope="session")
def corpus_bytes(reviews) -> bytes:
    rows = [
        {"text": t, "label": reviews.label_names[y]}
        for t, y in zip(reviews.texts, reviews.labels.tolist(), strict=True)
    ]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture(scope="session")
def world(api: Live, corpus_bytes: bytes) -> World:
    c = api.client
    tenants = []
    for name, fields in (
        ("tenant-a", {"kind": "linear", "epochs": 10}),
        ("tenant-b", {"kind": "blocks", "k": 1, "epochs": 2, "batch_size": 16}),
    ):
        tenant_id, key = create_tenant(c, name)
        corpus_id = upload(c, tenant_id, key, corpus_bytes)
        r = c.post(
            f"/v1/tenants/{tenant_id}/heads", json={"corpus_id": corpus_id, **fields}, headers=key
        )
        assert r.status_code == 202, r.text
        tenants.append(Tenant(tenant_id, key, corpus_id, r.json()["head_id"], r.json()["job_id"]))
    for t in tenants:
        job = wait_job(c, t.key, t.job_id)
        assert job["status"] == "done", job
    return World(*tenants)
