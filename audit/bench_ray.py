"""The Ray extraction benchmark behind ``audit bench``: a Ray Data job against its baselines.

- 2 workers against 1 worker: texts/s of the same job (how extraction scales with actors).
- 2 workers against in-process extraction (``ActivationStore.get``) of the same texts.

Each run is a whole job into an empty store, as a user runs it: actor start (import, backbone
load) included. The runs are interleaved (A B C A B C ...). A local Ray is started for the
benchmark and shut down after it unless one is already running in this process.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from audit.scale.ray_extract import extract_with_ray
from probes.store import ActivationStore

if TYPE_CHECKING:
    from audit.bench import BenchContext, Figure


def bench_ray_extraction(ctx: BenchContext) -> list[Figure]:
    """Ray Data extraction texts/s with 2 workers against 1 worker and against in-process."""
    import ray

    from audit.bench import Figure

    bb = ctx.backbone
    texts = list(ctx.texts)
    hooks = [bb.resid_hooks()[-1]] if ctx.quick else bb.resid_hooks()
    repeats = 1 if ctx.quick else ctx.repeats
    n_cpus = max(2, os.cpu_count() or 2)
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(
            address="local",
            num_cpus=n_cpus,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}},
        )
    pooled: dict[str, np.ndarray] = {}

    def job(name: str, run: Callable[[ActivationStore], object]) -> float:
        with tempfile.TemporaryDirectory() as tmp:
            store = ActivationStore(tmp)
            start = time.perf_counter()
            run(store)
            seconds = time.perf_counter() - start
            read = store.get(bb, texts, hooks, ("mean",), progress=False)
            pooled[name] = read.pooled[(hooks[-1], "mean")]
        return seconds

    def on_ray(workers: int) -> Callable[[ActivationStore], object]:
        return lambda store: extract_with_ray(
            bb,
            texts,
            hooks,
            ("mean",),
            store=store,
            num_workers=workers,
            batch_size=ctx.batch_size,
            progress=False,
        )

    def in_process(store: ActivationStore) -> object:
        return store.get(bb, texts, hooks, ("mean",), batch_size=ctx.batch_size, progress=False)

    paths = {"ray_2": on_ray(2), "ray_1": on_ray(1), "local": in_process}
    times: dict[str, list[float]] = {name: [] for name in paths}
    try:
        for _ in range(repeats):
            for name, run in paths.items():
                times[name].append(job(name, run))
    finally:
        if started_here:
            ray.shutdown()
    seconds = {name: statistics.median(ts) for name, ts in times.items()}
    speed = {name: len(texts) / s for name, s in seconds.items()}
    parity = max(float(np.abs(pooled[name] - pooled["local"]).max()) for name in ("ray_1", "ray_2"))
    notes = {
        "n_texts": len(texts),
        "hooks": len(hooks),
        "batch_size": ctx.batch_size,
        "repeats": repeats,
        "cpu_count": os.cpu_count(),
        "seconds": {name: round(s, 2) for name, s in seconds.items()},
        "timing": "whole jobs into an empty store, actor start included; interleaved; medians",
        "parity_max_abs_diff": parity,
    }
    return [
        Figure(
            "ray_extraction",
            "Ray Data extraction, 2 workers vs 1 (texts/s)",
            "texts/s",
            speed["ray_2"],
            speed["ray_1"],
            "same job, 1 worker",
            None,
            notes,
        ),
        Figure(
            "ray_extraction",
            "Ray Data extraction, 2 workers vs in-process (texts/s)",
            "texts/s",
            speed["ray_2"],
            speed["local"],
            "in-process ActivationStore.get",
            None,
            notes,
        ),
    ]
