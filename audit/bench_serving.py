"""Serving throughput under concurrency (``audit bench --only serving_load``).

``audit serve`` runs as a subprocess on a free localhost port with a temporary AUDIT_HOME and
admin key, no rate limit, and screening on (a screen bank is copied into the temporary catalog:
the backbone's latest bank, or a small one fitted now, so the server never fits the default
bank). Tenants are provisioned (each with its own labelled corpus and linear head), then the
load driver (``audit.loadgen``) runs one client at a time (the baseline) and many concurrent
clients, interleaved (serial, concurrent, serial, concurrent ...), each for a bounded time over
the same tenants and texts. The figure is concurrent requests/s against serial requests/s
(medians over the repeats); latency percentiles, 5xx counts and transport errors are notes.
In full mode the same runs are repeated on the same home with ``--no-screening``.
"""

from __future__ import annotations

import secrets
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

from audit.loadgen import LoadResult, ServerProcess, Workload, provision, run_load_sync


def bank_into(home: Path, backbone: Any, quick: bool) -> str:
    """Save a screen bank into ``home``'s catalog (the latest one, or a small one fitted now)."""
    from audit.screening.catalog import default_training_data, fit_default_bank, latest_bank
    from audit.screening.storage import save_bank

    bank = latest_bank(backbone)
    if bank is None:
        n_train, n_cal = (200, 150) if quick else (400, 300)
        train, calibration = default_training_data(max_train=n_train, max_calibration=n_cal)
        bank = fit_default_bank(
            backbone, train=train, calibration=calibration, progress=False, save=False
        )
    save_bank(bank, home / "screens" / bank.fingerprint[:16] / bank.version)
    return str(bank.version)


def load_work(tenants: Any, texts: Any, seconds: float) -> dict[str, Any]:
    """Return the load both serving benchmarks drive: the tenants' predictions on ``texts`` for
    ``seconds``, a quarter of the requests screening only."""
    return {
        "tenants": tenants,
        "texts": list(texts),
        "duration_s": seconds,
        "screen_fraction": 0.25,
    }


def merged_results(results: list[LoadResult]) -> dict[str, Any]:
    """Return the latency percentiles and error counts over several runs of one mode."""
    merged = LoadResult(concurrency=results[0].concurrency, n_tenants=results[0].n_tenants)
    for r in results:
        merged.latencies_ms += r.latencies_ms
        merged.status_counts.update(r.status_counts)
        merged.n_transport_errors += r.n_transport_errors
        merged.leaks += r.leaks
    return {
        "p50_ms": round(merged.latency_ms(50), 1),
        "p95_ms": round(merged.latency_ms(95), 1),
        "p99_ms": round(merged.latency_ms(99), 1),
        "n_requests": sum(r.n_requests for r in results),
        "n_5xx": merged.n_5xx,
        "n_transport_errors": merged.n_transport_errors,
        "n_leaks": len(merged.leaks),
        "requests_per_s_each_run": [round(r.requests_per_s, 2) for r in results],
    }


def _measure(
    server: ServerProcess, work: dict[str, Any], concurrency: int, repeats: int
) -> tuple[list[LoadResult], list[LoadResult]]:
    """Return the serial and concurrent runs, interleaved after one short warm-up."""
    warm_up = {**work, "duration_s": None, "max_requests": 32}
    run_load_sync(Workload(server.url, **warm_up, concurrency=concurrency))
    serial: list[LoadResult] = []
    concurrent: list[LoadResult] = []
    for i in range(repeats):
        serial.append(run_load_sync(Workload(server.url, **work, concurrency=1, seed=2 * i)))
        concurrent.append(
            run_load_sync(Workload(server.url, **work, concurrency=concurrency, seed=2 * i + 1))
        )
    return serial, concurrent


def _figure(
    mode: str,
    serial: list[LoadResult],
    concurrent: list[LoadResult],
    notes: dict[str, Any],
) -> Any:
    from audit.bench import Figure

    concurrency = concurrent[0].concurrency
    return Figure(
        benchmark="serving_load",
        name=f"audit serve requests/s, {concurrency} concurrent clients / 1 at a time ({mode})",
        unit="req/s",
        ours=statistics.median(r.requests_per_s for r in concurrent),
        baseline=statistics.median(r.requests_per_s for r in serial),
        baseline_name="one request at a time, same server, tenants and texts",
        notes={
            **notes,
            "mode": mode,
            "concurrent": merged_results(concurrent),
            "serial": merged_results(serial),
        },
    )


def bench_serving(ctx: Any) -> list[Any]:
    """Throughput of ``audit serve`` with many concurrent clients against one at a time."""
    from probes import load_dataset

    n_tenants, seconds, concurrency = (4, 2.0, 16) if ctx.quick else (24, 15.0, 32)
    repeats = ctx.repeats
    corpus = load_dataset("rotten_tomatoes", max_samples=48, seed=0)
    rows = list(zip(corpus.texts, corpus.labels.tolist(), strict=True))
    admin_key = "bench-" + secrets.token_urlsafe(24)
    home = Path(tempfile.mkdtemp(prefix="bench-serving-home-"))
    figures = []
    try:
        bank_version = bank_into(home, ctx.backbone, ctx.quick)
        notes: dict[str, Any] = {
            "n_tenants": n_tenants,
            "concurrency": concurrency,
            "seconds_per_run": seconds,
            "repeats": repeats,
            "texts_per_request": 1,
            "screen_fraction": 0.25,
            "bank": bank_version,
            "timing": "serial and concurrent runs interleaved after a warm-up; medians of req/s",
        }
        server = ServerProcess(home, admin_key)
        with server:
            tenants = provision(server.url, admin_key, n_tenants, rows, name_prefix="bench")
            work = load_work(tenants, ctx.texts, seconds)
            serial, concurrent = _measure(server, work, concurrency, repeats)
        figures.append(_figure("screening on", serial, concurrent, notes))
        if not ctx.quick:
            server.args = ["--no-screening"]
            with server:
                work["screen_fraction"] = 0.0  # /v1/screen answers 503 without screening
                serial, concurrent = _measure(server, work, concurrency, repeats)
            figures.append(
                _figure("screening off", serial, concurrent, {**notes, "screen_fraction": 0.0})
            )
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return figures
