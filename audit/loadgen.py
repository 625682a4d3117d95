"""An async load driver for ``audit serve``: many concurrent clients across many tenants.

``run_load`` sends a bounded stream of requests (by time and/or count) from ``concurrency``
client coroutines sharing one ``httpx.AsyncClient``. Each request is a prediction on the caller's
own head (``POST /v1/tenants/{tid}/heads/{hid}/predict``) or a screening request
(``POST /v1/screen``) with the tenant's key. The result holds throughput, latency percentiles,
status codes, transport errors, every decision id acknowledged to a client (with the tenant it
was made for) and every answer that carried another tenant's head or labels (a "leak").

A serial run is the same driver with ``concurrency=1``. ``provision`` creates tenants, each with
its own labelled corpus and a trained linear head (its own label names, so a cross-tenant leak
is visible in the labels); ``ServerProcess`` runs ``audit serve`` as a subprocess.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from audit.errors import AuditError

PREDICT = "predict"
SCREEN = "screen"
_MAX_ERRORS_KEPT = 20


class LoadError(AuditError):
    """Provisioning or the server process failed; the message names the request and the fix."""


# --------------------------------------------------------------------------- workload
@dataclass(frozen=True)
class TenantTarget:
    """A tenant the driver acts as: its key, its ready head and that head's label names."""

    tenant_id: str
    api_key: str
    head_id: str
    label_names: tuple[str, ...]

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.api_key)


@dataclass(frozen=True)
class Workload:
    """What to send, how many clients at once, and for how long.

    The run stops at ``duration_s`` seconds or after ``max_requests`` requests, whichever comes
    first (at least one must be set). ``screen_fraction`` of the requests go to ``/v1/screen``,
    the rest to the tenant's own head; each carries ``texts_per_request`` texts drawn from
    ``texts``. Tenants, kinds and texts are drawn from a generator seeded with ``seed`` (one per
    client coroutine).
    """

    url: str
    tenants: Sequence[TenantTarget]
    texts: Sequence[str]
    concurrency: int = 32
    duration_s: float | None = 10.0
    max_requests: int | None = None
    screen_fraction: float = 0.25
    texts_per_request: int = 1
    seed: int = 0
    timeout_s: float = 120.0
    progress: bool = False

    def __post_init__(self) -> None:
        if not self.tenants:
            raise LoadError("The workload has no tenants; provision some first (provision()).")
        if not self.texts:
            raise LoadError("The workload has no texts to send; give at least one.")
        if self.concurrency < 1:
            raise LoadError(f"concurrency must be at least 1; got {self.concurrency}.")
        if self.duration_s is None and self.max_requests is None:
            raise LoadError("Bound the run: set duration_s, max_requests, or both.")
        if not 0.0 <= self.screen_fraction <= 1.0:
            raise LoadError(f"screen_fraction must be in [0, 1]; got {self.screen_fraction}.")
        if self.texts_per_request < 1:
            raise LoadError(f"texts_per_request must be at least 1; got {self.texts_per_request}.")


# ------------------------------------------------------------------------------ results
def percentile(values: Sequence[float], q: float) -> float:
    """Return the ``q``-th percentile (0..100) of ``values``, linearly interpolated; NaN if empty.

    The same definition as ``numpy.percentile``'s default ("linear").
    """
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"A percentile must be in [0, 100]; got {q}.")
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class LoadResult:
    """The outcome of one load run.

    ``latencies_ms`` holds every answered request's latency (any status); ``decisions`` maps
    each decision id acknowledged in a 200 answer to the tenant it was made for. ``leaks`` and
    ``duplicates`` describe answers that should never happen: another tenant's head or labels,
    a decision id answered twice.
    """

    concurrency: int
    n_tenants: int
    duration_s: float = 0.0
    n_requests: int = 0
    n_texts_ok: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    status_counts: Counter[int] = field(default_factory=Counter)
    kind_counts: Counter[str] = field(default_factory=Counter)
    n_transport_errors: int = 0
    transport_errors: list[str] = field(default_factory=list)
    decisions: dict[str, str] = field(default_factory=dict)
    leaks: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # bodies of answers with status >= 400
    n_blocked: int = 0

    @property
    def n_ok(self) -> int:
        return self.status_counts.get(200, 0)

    @property
    def n_5xx(self) -> int:
        return sum(n for code, n in self.status_counts.items() if code >= 500)

    @property
    def requests_per_s(self) -> float:
        return self.n_requests / self.duration_s if self.duration_s > 0 else math.nan

    @property
    def ok_per_s(self) -> float:
        return self.n_ok / self.duration_s if self.duration_s > 0 else math.nan

    def latency_ms(self, q: float) -> float:
        return percentile(self.latencies_ms, q)

    def summary(self) -> dict[str, Any]:
        """Return the figures as JSON-ready data (no per-request lists)."""
        return {
            "concurrency": self.concurrency,
            "n_tenants": self.n_tenants,
            "duration_s": round(self.duration_s, 3),
            "n_requests": self.n_requests,
            "n_ok": self.n_ok,
            "n_texts_ok": self.n_texts_ok,
            "requests_per_s": round(self.requests_per_s, 2),
            "ok_per_s": round(self.ok_per_s, 2),
            "latency_ms": {
                "p50": round(self.latency_ms(50), 2),
                "p95": round(self.latency_ms(95), 2),
                "p99": round(self.latency_ms(99), 2),
                "max": round(max(self.latencies_ms), 2) if self.latencies_ms else math.nan,
            },
            "status_counts": {str(k): v for k, v in sorted(self.status_counts.items())},
            "kind_counts": dict(self.kind_counts),
            "n_5xx": self.n_5xx,
            "n_transport_errors": self.n_transport_errors,
            "n_decisions": len(self.decisions),
            "n_blocked": self.n_blocked,
            "n_leaks": len(self.leaks),
            "n_duplicates": len(self.duplicates),
        }


# ------------------------------------------------------------------------------ checks
def _check_predict(
    body: dict[str, Any], tenant: TenantTarget, n_texts: int, result: LoadResult
) -> list[dict[str, Any]]:
    """Record leaks in a predict answer; return its screening decisions."""
    where = f"tenant {tenant.tenant_id} head {tenant.head_id}"
    if body.get("head_id") != tenant.head_id:
        result.leaks.append(f"{where}: answer for head {body.get('head_id')!r}")
    results = body.get("results") or []
    if len(results) != n_texts:
        result.leaks.append(f"{where}: {len(results)} results for {n_texts} texts")
    labels = set(tenant.label_names)
    screenings = []
    for item in results:
        if item.get("blocked"):
            result.n_blocked += 1
        else:
            label = item.get("label")
            if label is not None and label not in labels:
                result.leaks.append(f"{where}: label {label!r} is not one of {sorted(labels)}")
            foreign = set(item.get("scores") or {}) - labels
            if foreign:
                result.leaks.append(f"{where}: scores for foreign labels {sorted(foreign)}")
        if item.get("screening") is not None:
            screenings.append(item["screening"])
    return screenings


def _check_screen(
    body: dict[str, Any], tenant: TenantTarget, n_texts: int, result: LoadResult
) -> list[dict[str, Any]]:
    """Record a malformed screen answer; return its decisions."""
    results = list(body.get("results") or [])
    if len(results) != n_texts:
        result.leaks.append(
            f"tenant {tenant.tenant_id}: /v1/screen gave {len(results)} results for {n_texts} texts"
        )
    result.n_blocked += sum(1 for d in results if d.get("decision") == "block")
    return results


def _acknowledge(screenings: list[dict[str, Any]], tenant_id: str, result: LoadResult) -> None:
    for decision in screenings:
        decision_id = str(decision.get("decision_id"))
        if decision_id in result.decisions:
            result.duplicates.append(decision_id)
        else:
            result.decisions[decision_id] = tenant_id


# ------------------------------------------------------------------------------ driver
async def _client_loop(
    worker: int,
    client: httpx.AsyncClient,
    work: Workload,
    result: LoadResult,
    budget: list[int],
    deadline: float,
    stop: asyncio.Event,
    bar: Any,
) -> None:
    rng = random.Random(work.seed * 1_000_003 + worker)
    while not stop.is_set() and time.perf_counter() < deadline:
        if budget[0] <= 0:
            return
        budget[0] -= 1
        tenant = work.tenants[rng.randrange(len(work.tenants))]
        texts = [work.texts[rng.randrange(len(work.texts))] for _ in range(work.texts_per_request)]
        kind = SCREEN if rng.random() < work.screen_fraction else PREDICT
        if kind == SCREEN:
            path = "/v1/screen"
        else:
            path = f"/v1/tenants/{tenant.tenant_id}/heads/{tenant.head_id}/predict"
        payload: dict[str, Any] = {"texts": texts} if len(texts) > 1 else {"text": texts[0]}
        start = time.perf_counter()
        try:
            response = await client.post(path, json=payload, headers=tenant.headers)
            body = response.json() if response.status_code == 200 else None
        except (httpx.TransportError, ValueError) as exc:
            # ValueError: a 200 whose body is not JSON (cut short) is not an acknowledgement.
            result.n_transport_errors += 1
            if len(result.transport_errors) < _MAX_ERRORS_KEPT:
                result.transport_errors.append(f"{kind}: {type(exc).__name__}: {exc}")
            await asyncio.sleep(0.01)  # a dead server refuses at once: do not spin on it
            continue
        finally:
            if bar is not None:
                bar.update(1)
        result.latencies_ms.append((time.perf_counter() - start) * 1000.0)
        result.n_requests += 1
        result.kind_counts[kind] += 1
        result.status_counts[response.status_code] += 1
        if body is None:
            if len(result.errors) < _MAX_ERRORS_KEPT:
                result.errors.append(f"{kind} {response.status_code}: {response.text[:300]}")
            continue
        result.n_texts_ok += len(texts)
        check = _check_screen if kind == SCREEN else _check_predict
        _acknowledge(check(body, tenant, len(texts), result), tenant.tenant_id, result)


async def run_load(work: Workload, stop: asyncio.Event | None = None) -> LoadResult:
    """Run ``work`` against its server and return the measured result.

    ``stop``, when set by the caller, ends the run early (each client finishes its request in
    flight). A request that fails at the transport level (connection refused or cut) is counted
    as a transport error and never as acknowledged.
    """
    stop = stop if stop is not None else asyncio.Event()
    result = LoadResult(concurrency=work.concurrency, n_tenants=len(work.tenants))
    budget = [work.max_requests if work.max_requests is not None else sys.maxsize]
    limits = httpx.Limits(
        max_connections=work.concurrency, max_keepalive_connections=work.concurrency
    )
    bar = None
    if work.progress:
        from tqdm import tqdm

        bar = tqdm(total=work.max_requests, desc=f"load x{work.concurrency}", unit="req")
    async with httpx.AsyncClient(
        base_url=work.url, timeout=work.timeout_s, limits=limits
    ) as client:
        start = time.perf_counter()
        deadline = start + work.duration_s if work.duration_s is not None else math.inf
        try:
            await asyncio.gather(
                *(
                    _client_loop(i, client, work, result, budget, deadline, stop, bar)
                    for i in range(work.concurrency)
                )
            )
        finally:
            result.duration_s = time.perf_counter() - start
            if bar is not None:
                bar.close()
    return result


def run_load_sync(work: Workload) -> LoadResult:
    """Return ``run_load(work)`` run to the end in a new event loop."""
    return asyncio.run(run_load(work))


# ------------------------------------------------------------------------ provisioning
def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _expect(response: httpx.Response, status: int, what: str) -> dict[str, Any]:
    if response.status_code != status:
        raise LoadError(
            f"{what}: expected HTTP {status}, got {response.status_code}: {response.text[:500]}"
        )
    body: dict[str, Any] = response.json()
    return body


def create_tenant(client: httpx.Client, admin_key: str, name: str) -> tuple[str, str]:
    """Return a new tenant's id and API key (``POST /v1/tenants`` with the admin key)."""
    body = _expect(
        client.post("/v1/tenants", json={"name": name}, headers=bearer(admin_key)),
        201,
        f"creating tenant {name!r} (is AUDIT_ADMIN_KEY set on the server and equal to ours?)",
    )
    return str(body["tenant_id"]), str(body["api_key"])


def corpus_ndjson(rows: Sequence[tuple[str, str]]) -> bytes:
    """Return ``(text, label)`` rows as an NDJSON corpus upload."""
    return "".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows).encode()


def upload_corpus(
    client: httpx.Client, tenant_id: str, api_key: str, rows: Sequence[tuple[str, str]]
) -> str:
    """Return the id of a labelled corpus uploaded for the tenant."""
    body = _expect(
        client.post(
            f"/v1/tenants/{tenant_id}/corpora",
            content=corpus_ndjson(rows),
            headers={**bearer(api_key), "Content-Type": "application/x-ndjson"},
        ),
        201,
        f"uploading a corpus for tenant {tenant_id}",
    )
    return str(body["corpus_id"])


def submit_head(
    client: httpx.Client, tenant_id: str, api_key: str, corpus_id: str, **fields: Any
) -> tuple[str, str]:
    """Return ``(head_id, job_id)`` of a head submitted for training (202)."""
    body = _expect(
        client.post(
            f"/v1/tenants/{tenant_id}/heads",
            json={"corpus_id": corpus_id, **fields},
            headers=bearer(api_key),
        ),
        202,
        f"submitting a head for tenant {tenant_id}",
    )
    return str(body["head_id"]), str(body["job_id"])


def wait_job(client: httpx.Client, api_key: str, job_id: str, timeout_s: float = 300.0) -> dict:
    """Return the job once it is done; raise LoadError if it failed or ran past ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        job = _expect(client.get(f"/v1/jobs/{job_id}", headers=bearer(api_key)), 200, "a job")
        if job["status"] == "done":
            return job
        if job["status"] == "failed":
            raise LoadError(f"Training job {job_id} failed: {job.get('error')}")
        if time.monotonic() > deadline:
            raise LoadError(
                f"Training job {job_id} is still {job['status']} after {timeout_s:.0f} s; "
                "give it longer (timeout_s) or train fewer epochs."
            )
        time.sleep(0.1)


def tenant_labels(index: int) -> tuple[str, str]:
    """Return tenant ``index``'s own label names for a binary corpus (0 -> neg, 1 -> pos)."""
    return f"neg-{index}", f"pos-{index}"


def provision(
    url: str,
    admin_key: str,
    n_tenants: int,
    rows: Sequence[tuple[str, int]],
    *,
    epochs: int = 5,
    name_prefix: str = "load",
    screen_policy: str = "exclude",
    timeout_s: float = 600.0,
) -> list[TenantTarget]:
    """Create ``n_tenants`` tenants, each with the ``rows`` corpus and a trained linear head.

    ``rows`` are ``(text, 0 or 1)``; tenant ``i`` gets the labels ``neg-i`` / ``pos-i``
    (``tenant_labels``), so a prediction answered with another tenant's head would show foreign
    labels. Every tenant shares the texts, so the backbone pass over them is computed once.
    ``screen_policy`` is what training does with rows the server's screening blocks (the
    default, exclude, trains on the others). Training jobs are all submitted first, then waited
    for.
    """
    if n_tenants < 1:
        raise LoadError(f"n_tenants must be at least 1; got {n_tenants}.")
    if {y for _, y in rows} != {0, 1}:
        raise LoadError("provision() needs rows labelled 0 and 1 (both labels present).")
    pending = []
    with httpx.Client(base_url=url, timeout=timeout_s) as client:
        for i in range(n_tenants):
            names = tenant_labels(i)
            tenant_id, key = create_tenant(client, admin_key, f"{name_prefix}-{i}")
            corpus_id = upload_corpus(client, tenant_id, key, [(t, names[y]) for t, y in rows])
            head_id, job_id = submit_head(
                client,
                tenant_id,
                key,
                corpus_id,
                kind="linear",
                epochs=epochs,
                screen_policy=screen_policy,
            )
            pending.append((TenantTarget(tenant_id, key, head_id, names), job_id))
        deadline = time.monotonic() + timeout_s
        for target, job_id in pending:
            wait_job(client, target.api_key, job_id, max(1.0, deadline - time.monotonic()))
    return [target for target, _ in pending]


# ----------------------------------------------------------------------- server process
def free_port() -> int:
    """Return a TCP port on localhost that is free now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``audit serve`` as a subprocess on a free localhost port, state under ``home``.

    The server gets ``AUDIT_HOME=home`` and ``AUDIT_ADMIN_KEY=admin_key``, no rate limit, and
    writes its stdout / stderr to ``home/serve-<n>.out`` / ``.err``. ``start`` returns once
    ``/healthz`` answers. ``kill`` is a kill -9 (nothing is flushed or shut down); ``stop`` is
    an ordinary SIGTERM shutdown.
    """

    def __init__(
        self,
        home: Path,
        admin_key: str,
        *,
        args: Sequence[str] = (),
        startup_timeout_s: float = 300.0,
    ) -> None:
        self.home = Path(home)
        self.admin_key = admin_key
        self.args = list(args)
        self.startup_timeout_s = startup_timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.info: dict[str, Any] = {}
        self.n_starts = 0

    @property
    def stderr_path(self) -> Path:
        return self.home / f"serve-{self.n_starts}.err"

    def stderr_tail(self, n_chars: int = 3000) -> str:
        """Return the end of the current process's stderr (its log), for error messages."""
        try:
            return self.stderr_path.read_text(errors="replace")[-n_chars:]
        except OSError:
            return ""

    def start(self) -> ServerProcess:
        """Start the server and wait until it answers; raise LoadError naming its log if not."""
        if self.process is not None and self.process.poll() is None:
            raise LoadError("The server is already running; stop or kill it first.")
        self.n_starts += 1
        self.info = {}
        self.home.mkdir(parents=True, exist_ok=True)
        port = free_port()
        env = {**os.environ, "AUDIT_HOME": str(self.home), "AUDIT_ADMIN_KEY": self.admin_key}
        command = [
            sys.executable,
            "-m",
            "audit.cli",
            "serve",
            "--port",
            str(port),
            "--json",
            "--rate-limit-per-minute",
            "0",
            "--log-level",
            "warning",
            *self.args,
        ]
        out_path = self.home / f"serve-{self.n_starts}.out"
        with out_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.process = subprocess.Popen(command, env=env, stdout=out, stderr=err)
        deadline = time.monotonic() + self.startup_timeout_s
        while not self.info:
            text = out_path.read_text(errors="replace")
            if "\n" in text:
                self.info = json.loads(text.splitlines()[0])
                break
            self._check_alive(deadline)
            time.sleep(0.1)
        self.url = str(self.info["url"])
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while True:
                try:
                    if client.get("/healthz").status_code in (200, 401):
                        return self
                except httpx.TransportError:
                    pass
                self._check_alive(deadline)
                time.sleep(0.1)

    def _check_alive(self, deadline: float) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise LoadError(
                f"audit serve exited with status {self.process.returncode} before serving; "
                f"its log ({self.stderr_path}) ends with:\n{self.stderr_tail()}"
            )
        if time.monotonic() > deadline:
            self.kill()
            raise LoadError(
                f"audit serve did not answer within {self.startup_timeout_s:.0f} s; its log "
                f"({self.stderr_path}) ends with:\n{self.stderr_tail()}"
            )

    def restart(self) -> ServerProcess:
        """Start the server again on the same home (after ``kill`` or ``stop``)."""
        return self.start()

    def kill(self) -> None:
        """Kill the server with SIGKILL (kill -9) and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=60)

    def stop(self, timeout_s: float = 60.0) -> None:
        """Shut the server down with SIGTERM; kill it if it has not exited in ``timeout_s``."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
