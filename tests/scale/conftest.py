"""Shared fixtures of the scale-out tests: one local Ray cluster for the whole session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

ray = pytest.importorskip("ray")


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Start a local Ray cluster (two CPUs, its own temp folder) once per session.

    Tests that need a cluster of a given shape start work on it with explicit resources (e.g.
    an actor pool of one or two workers); the cluster is shut down when the session ends.
    """
    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=256 * 1024**2,
        _temp_dir=str(tmp_path_factory.mktemp("ray")),
        runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", **_thread_env()}},
    )
    try:
        yield ray
    finally:
        ray.shutdown()


def _thread_env() -> dict[str, str]:
    """Pass the session's thread settings (if any) on to Ray's workers."""
    return {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ}


from tests.scale.postgres_server import postgres_url  # noqa: E402, F401
