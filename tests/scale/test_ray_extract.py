"""Ray Data extraction writes the shards local extraction writes, and the store reads them as its own."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from audit.scale.extract_cli import extract
from audit.scale.ray_extract import StoredExtraction, extract_with_ray
from probes import ActivationStore, Backbone, load_dataset
from probes.bundled import minilm_folder
from probes.errors import FingerprintMismatchError, InvalidInputError, UnknownNameError

HOOKS = ["blocks.1.hook_resid_post", "blocks.3.hook_resid_post"]
POOLINGS = ["mean", "max", "first", "last", "tokens"]
N_TEXTS = 64


@dataclass
class Written:
    texts: list[str]
    ray_store: ActivationStore
    local_store: ActivationStore
    result: StoredExtraction


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return list(load_dataset("rotten_tomatoes", max_samples=N_TEXTS, seed=0).texts)


@pytest.fixture(scope="module")
def written(
    ray_cluster: Any, backbone: Backbone, texts: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Written:
    """One Ray extraction (2 workers) and one local extraction of the same request.

    The local one runs on the workers' intra-op thread count: MKL and oneDNN do not promise the
    same bits at every thread count, so this is the comparison that holds on any CPU.
    """
    root = tmp_path_factory.mktemp("ray-extract")
    ray_store, local_store = ActivationStore(root / "ray"), ActivationStore(root / "local")
    result = extract_with_ray(
        backbone,
        texts,
        HOOKS,
        POOLINGS,
        store=ray_store,
        num_workers=2,
        batch_size=16,
        dataset_name="rotten_tomatoes",
        progress=False,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(result.notes["threads_per_worker"])
    try:
        local_store.get(
            backbone,
            texts,
            HOOKS,
            POOLINGS,
            batch_size=16,
            progress=False,
            dataset_name="rotten_tomatoes",
        )
    finally:
        torch.set_num_threads(threads)
    return Written(texts, ray_store, local_store, result)


def _max_diff(ours: np.ndarray, local: np.ndarray) -> float:
    """Return the max absolute difference."""
    return float(np.abs(ours.astype(np.float64) - local.astype(np.float64)).max())


def _files(store: ActivationStore) -> dict[Path, Path]:
    return {p.relative_to(store.root): p for p in sorted(store.root.rglob("*.*"))}


def test_ray_shards_match_local_extraction(written: Written, backbone: Backbone) -> None:
    result = written.result
    # 64 texts in blocks of whole planned batches, at least one block per worker.
    assert result.num_workers == 2 and result.notes["blocks"] >= 2
    assert result.notes["threads_per_worker"] == 1  # one CPU per worker
    assert len(result.computed) == len(HOOKS) * len(POOLINGS) and not result.reused
    # Same shard files (the token-statistics shard included), under the same relative paths.
    ray_files, local_files = _files(written.ray_store), _files(written.local_store)
    assert list(ray_files) == list(local_files)
    assert {p.relative_to(written.ray_store.root) for p in result.shards.values()} == {
        k.relpath.with_name(k.relpath.name + ".safetensors") for k in result.shards
    }
    for rel, path in ray_files.items():
        if rel.suffix != ".json":
            continue
        ours, theirs = json.loads(path.read_text()), json.loads(local_files[rel].read_text())
        for meta in (ours, theirs):
            del meta["created_at"], meta["sha256"]
        assert ours == theirs, rel
    ray_acts = ActivationStore(written.ray_store.root).get(backbone, written.texts, HOOKS, POOLINGS)
    local_acts = written.local_store.get(backbone, written.texts, HOOKS, POOLINGS)
    for key, values in local_acts.pooled.items():
        assert values.shape == (N_TEXTS, backbone.d_model)
        # The same batches (widths) on the same thread count: the same kernels, so the same
        # bits on one CPU (1e-6 absolute is the promise; another batch width alone moves the
        # values by up to 1.9e-6, activations reach about 10.5).
        assert _max_diff(ray_acts.pooled[key], values) <= 1e-6, key
    for hook, ragged in local_acts.tokens.items():
        np.testing.assert_array_equal(ray_acts.tokens[hook].offsets, ragged.offsets)
        assert _max_diff(ray_acts.tokens[hook].values, ragged.values) <= 1e-6, hook
    np.testing.assert_array_equal(ray_acts.n_tokens, local_acts.n_tokens)


def test_store_reads_ray_shards_without_recomputing(written: Written, backbone: Backbone) -> None:
    mtimes = {p: p.stat().st_mtime_ns for p in written.ray_store.root.rglob("*.*")}
    forwards = backbone.n_forward_passes
    store = ActivationStore(written.ray_store.root)
    acts = store.get(backbone, written.texts, HOOKS, ["mean"], dataset_name="rotten_tomatoes")
    assert backbone.n_forward_passes == forwards
    assert store.n_recomputed_corrupt == 0
    assert acts.pooled[(HOOKS[1], "mean")].shape == (N_TEXTS, backbone.d_model)
    # A second Ray extraction finds every shard stored: no Ray job, no file rewritten.
    again = extract_with_ray(backbone, written.texts, HOOKS, POOLINGS, store=store, progress=False)
    assert not again.computed and len(again.reused) == len(HOOKS) * len(POOLINGS)
    assert again.ray_address is None and again.num_workers == 0
    assert {p: p.stat().st_mtime_ns for p in store.root.rglob("*.*")} == mtimes


def test_cli_reports_where_the_shards_are(written: Written) -> None:
    args = ["--dataset", "rotten_tomatoes", "--max-samples", str(N_TEXTS), "--seed", "0"]
    args += [x for hook in HOOKS for x in ("--hook", hook)] + ["--pooling", "mean", "--ray"]
    args += ["--store", str(written.ray_store.root), "--quiet"]
    result = CliRunner().invoke(extract, args)
    assert result.exit_code == 0, result.output
    assert "0 shard(s) written nothing to compute, 2 already stored" in result.output
    for key, path in written.result.shards.items():
        assert (str(path) in result.output) == (key.pooling == "mean"), key
    refused = CliRunner().invoke(extract, ["--dataset", "rotten_tomatoes", "--workers", "3"])
    assert refused.exit_code == 1 and "add --ray" in refused.output


def test_worker_with_another_fingerprint_is_refused(
    ray_cluster: Any, texts: list[str], tmp_path: Path
) -> None:
    # A model folder that changes after the driver fingerprinted it: what a node with other
    # weights or config looks like to the driver.
    folder = tmp_path / "model"
    folder.mkdir()
    for path in minilm_folder().iterdir():
        if path.name == "config.json":
            shutil.copy(path, folder / path.name)
        else:
            (folder / path.name).symlink_to(path)
    driver_copy = Backbone.load(str(folder))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "edited": True}))
    store = ActivationStore(tmp_path / "store")
    with pytest.raises(FingerprintMismatchError, match=r"fingerprint \w+, but the driver's is"):
        extract_with_ray(
            driver_copy, texts[:8], HOOKS[:1], ["mean"], store=store, num_workers=1, progress=False
        )
    assert not list(store.root.rglob("*.safetensors"))


@pytest.mark.parametrize(
    ("texts", "kwargs", "error", "match"),
    [
        (["a fine film", "  "], {}, InvalidInputError, "Text 1 is empty"),
        (["a fine film"], {"poolings": ["median"]}, UnknownNameError, "Unknown pooling 'median'"),
        (["a fine film"], {"hook_names": ["blocks.9.resid"]}, UnknownNameError, "Unknown hook"),
        (["a fine film"], {"num_workers": 0}, InvalidInputError, "num_workers must be"),
        ([], {}, InvalidInputError, "No texts given"),
    ],
)
def test_bad_requests_are_refused_before_ray_runs(
    backbone: Backbone,
    tmp_path: Path,
    texts: list[str],
    kwargs: dict[str, Any],
    error: type[Exception],
    match: str,
) -> None:
    store = ActivationStore(tmp_path)
    with pytest.raises(error, match=match):
        extract_with_ray(backbone, texts, store=store, progress=False, **kwargs)
    assert not list(tmp_path.rglob("*"))
