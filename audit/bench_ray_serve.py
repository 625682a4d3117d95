"""Ray Serve replica scaling: requests/s of 2 replicas against 1 (``audit bench --only ray_serve``).

The tenant API runs behind Ray Serve's HTTP proxy (``audit.scale.serve_ray``) on a local Ray
(joined instead when this process already initialised one), on a temporary AUDIT_HOME with a
screen bank copied into its catalog, screening on and no rate limit. Each replica reserves half
the machine's CPUs, so two replicas together get what a single server would. Tenants are
provisioned through one replica; the load driver (``audit.loadgen``) then runs the same
concurrent workload against 1 replica and, after a redeploy, against 2 (a redeploy restarts the
replicas, so the runs are grouped by replica count rather than interleaved; each group starts
with a warm-up). The figure is 2-replica requests/s against 1-replica requests/s (medians);
latency percentiles and 5xx counts are notes.
"""

from __future__ import annotations

import os
import secrets
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

from audit.bench_serving import bank_into, load_work, merged_results
from audit.loadgen import LoadResult, Workload, free_port, provision, run_load_sync


def _runs(url: str, work: dict[str, Any], concurrency: int, repeats: int) -> list[LoadResult]:
    """Return ``repeats`` timed runs after a short warm-up (heads loaded, engine batching)."""
    warm_up = {**work, "duration_s": None, "max_requests": 32}
    run_load_sync(Workload(url, **warm_up, concurrency=concurrency))
    return [
        run_load_sync(Workload(url, **work, concurrency=concurrency, seed=i))
        for i in range(repeats)
    ]


def bench_ray_serve(ctx: Any) -> list[Any]:
    """Throughput of 2 Ray Serve replicas of the tenant API against 1, same workload."""
    from audit.api.settings import ApiSettings
    from audit.bench import Figure
    from audit.scale.serve_ray import require_ray, run_replicas
    from probes import load_dataset

    require_ray()
    import ray

    n_tenants, seconds, concurrency = (4, 4.0, 16) if ctx.quick else (12, 15.0, 32)
    repeats = ctx.repeats
    n_cpus = os.cpu_count() or 2
    cpus_per_replica = max(0.5, n_cpus / 2)
    corpus = load_dataset("rotten_tomatoes", max_samples=48, seed=0)
    rows = list(zip(corpus.texts, corpus.labels.tolist(), strict=True))
    admin_key = "bench-" + secrets.token_urlsafe(24)
    home = Path(tempfile.mkdtemp(prefix="bench-ray-serve-home-"))
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(
            num_cpus=n_cpus,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}},
        )
    try:
        bank_version = bank_into(home, ctx.backbone, ctx.quick)
        with run_replicas(
            home,
            replicas=1,
            port=free_port(),
            admin_key=admin_key,
            settings=ApiSettings(rate_limit_per_minute=0),
            screens_version=bank_version,
            num_cpus_per_replica=cpus_per_replica,
        ) as served:
            tenants = provision(served.url, admin_key, n_tenants, rows, name_prefix="bench")
            work = load_work(tenants, ctx.texts, seconds)
            one = _runs(served.url, work, concurrency, repeats)
            served.scale(2)
            two = _runs(served.url, work, concurrency, repeats)
    finally:
        if started_ray:
            ray.shutdown()
        shutil.rmtree(home, ignore_errors=True)
    return [
        Figure(
            benchmark="ray_serve",
            name=f"Ray Serve requests/s, 2 replicas / 1 replica ({concurrency} concurrent clients, "
            "screening on)",
            unit="req/s",
            ours=statistics.median(r.requests_per_s for r in two),
            baseline=statistics.median(r.requests_per_s for r in one),
            baseline_name="1 replica, same proxy, tenants and texts",
            notes={
                "n_tenants": n_tenants,
                "concurrency": concurrency,
                "seconds_per_run": seconds,
                "repeats": repeats,
                "cpu_count": n_cpus,
                "cpus_per_replica": cpus_per_replica,
                "screen_fraction": 0.25,
                "bank": bank_version,
                "timing": "runs grouped by replica count (a redeploy restarts replicas), "
                "each group after a warm-up; medians of req/s",
                "one_replica": merged_results(one),
                "two_replicas": merged_results(two),
            },
        )
    ]
