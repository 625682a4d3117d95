"""Helpers of the API tests: a real uvicorn server in a thread, keys, uploads, training."""

from __future__ import annotations

import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI

from audit.api import create_app

ADMIN_KEY = "admin-" + secrets.token_urlsafe(24)
N_ROWS = 64


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """Run ``app`` under uvicorn in a thread on a free port; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the API server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


ADMIN = bearer(ADMIN_KEY)
NDJSON = {"Content-Type": "application/x-ndjson"}


@dataclass
class Live:
    """A running server: its URL, its app (for its state), a client and the state folder."""

    url: str
    app: FastAPI
    client: httpx.Client
    home: Path

    @property
    def state(self):
        return self.app.state.api


@contextmanager
def live_server(home: Path, backbone, **kwargs) -> Iterator[Live]:
    # Unscreened unless asked: screening tests pass screening=True with the session's bank.
    kwargs.setdefault("screening", False)
    app = create_app(home=home, backbone=backbone, **kwargs)
    with serving(app) as url, httpx.Client(base_url=url, timeout=120) as client:
        yield Live(url, app, client, home)


def create_tenant(client: httpx.Client, name: str) -> tuple[str, dict[str, str]]:
    """Return a new tenant's id and its auth header."""
    r = client.post("/v1/tenants", json={"name": name}, headers=ADMIN)
    assert r.status_code == 201, r.text
    return r.json()["tenant_id"], bearer(r.json()["api_key"])


def upload(client: httpx.Client, tenant_id: str, key: dict[str, str], data: bytes) -> str:
    r = client.post(f"/v1/tenants/{tenant_id}/corpora", content=data, headers={**key, **NDJSON})
    assert r.status_code == 201, r.text
    return r.json()["corpus_id"]


def wait_job(client: httpx.Client, key: dict[str, str], job_id: str, timeout: float = 120) -> dict:
    """Poll a job until it is done or failed; return its last state."""
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(f"/v1/jobs/{job_id}", headers=key)
        assert r.status_code == 200, r.text
        job = r.json()
        if job["status"] in ("done", "failed") or time.monotonic() > deadline:
            return job
        time.sleep(0.1)


def train(client: httpx.Client, tenant_id: str, key: dict[str, str], **fields) -> str:
    """Return the id of a head trained (to the end) with the given request fields."""
    r = client.post(f"/v1/tenants/{tenant_id}/heads", json=fields, headers=key)
    assert r.status_code == 202, r.text
    job = wait_job(client, key, r.json()["job_id"])
    assert job["status"] == "done", job
    return r.json()["head_id"]


@dataclass
class Tenant:
    tenant_id: str
    key: dict[str, str]
    corpus_id: str
    head_id: str
    job_id: str = ""


@dataclass
class World:
    a: Tenant  # a linear head
    b: Tenant  # a blocks head (k=1)
