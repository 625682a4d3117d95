"""Activation extraction of a large corpus as a Ray Data job, written to the ActivationStore.

The driver orders the corpus by token count (as ``Backbone.extract`` does) and cuts it into
blocks of whole batches: a Ray dataset of ``(row, text)`` blocks. An actor pool of
``num_workers`` backbone copies (each loaded once, and refused unless its fingerprint is the
driver's) extracts one block per call with ``Backbone.extract``, so every batch is the one local
extraction forms and the activations come out the same. The driver puts the rows back in corpus
order and saves every (hook, pooling) shard through ``ActivationStore.save``: key, metadata and
checksum are those ``ActivationStore.get`` writes, so a probe reading the store cannot tell which
one ran. Shards already in the store are not recomputed.

Parity with local extraction: a text's float32 activations depend on the batch it runs in (its
padded width changes the shapes, hence the rounding of the kernels: up to 2e-6 on MiniLM),
so workers run exactly the corpus-wide batches. Each worker also runs torch on an explicit
number of intra-op threads (``threads_per_worker``; by default the whole CPUs it reserves, as
Ray's OMP_NUM_THREADS would give it): MKL and oneDNN do not promise the same bits at every
thread count, so a local extraction on the same CPU at that thread count gives bit-identical
activations.

Where Ray runs: ``address`` (or ``RAY_ADDRESS``) names a cluster to join; otherwise a Ray
already initialised in this process is used, or a local one is started for the call and shut
down after it. Workers send activations back through Ray's object store and the driver alone
writes the store, so its root only needs to be on a filesystem the driver can write.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import os
import re
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from audit.errors import AuditError
from probes.backbone import Backbone, RaggedTokens, plan_batches
from probes.errors import FingerprintMismatchError, InvalidInputError, ProbesError
from probes.hooks import check_hook_names
from probes.pooling import POOLINGS, TOKENS, check_pooling
from probes.store import ActivationStore, ShardKey, texts_hash

logger = logging.getLogger(__name__)

STATS_HOOK, STATS_POOLING = "_tokens", "stats"  # the token-count shard ActivationStore.get keeps
DEFAULT_BLOCK_ROWS = 1024  # most texts a worker extracts per call (whole batches)


@dataclass(frozen=True)
class StoredExtraction:
    """What an extraction left in the store: every shard asked for, by key."""

    shards: dict[ShardKey, Path]  # every (hook, pooling) asked for -> its tensor file
    computed: tuple[ShardKey, ...]  # shards this call extracted and wrote
    reused: tuple[ShardKey, ...]  # shards that were already stored (not recomputed)
    store_root: Path
    n_texts: int
    num_workers: int  # Ray actors used; 0 when nothing ran on Ray
    seconds: float
    ray_address: str | None = None  # the cluster used; None when nothing ran on Ray
    notes: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready summary (shards as hook, pooling and path)."""
        return {
            "n_texts": self.n_texts,
            "computed": len(self.computed),
            "reused": len(self.reused),
            "num_workers": self.num_workers,
            "seconds": round(self.seconds, 3),
            "ray_address": self.ray_address,
            "store": str(self.store_root),
            "shards": [
                {"hook_name": k.hook_name, "pooling": k.pooling, "path": str(p)}
                for k, p in self.shards.items()
            ],
            **self.notes,
        }


class BlockExtractor:
    """A Ray Data actor: one backbone copy that extracts whole blocks of ``(row, text)``."""

    def __init__(
        self,
        spec: str,
        *,
        fingerprint: str,
        max_length: int,
        device: str,
        hook_names: Sequence[str],
        poolings: Sequence[str],
        batch_size: int,
        threads: int,
    ) -> None:
        import torch

        # Set before the first forward; the driver chose it (see the module docstring).
        torch.set_num_threads(threads)
        # A refusal is kept and raised from the first call: a failed task aborts the job with
        # the worker's message, a failed constructor reads as a crashed actor.
        self.error: ProbesError | None = None
        try:
            self.backbone = self._load(spec, fingerprint, max_length, device)
        except ProbesError as exc:
            self.error = exc
        self.hook_names = list(hook_names)
        self.poolings = list(poolings)
        self.batch_size = batch_size

    @staticmethod
    def _load(spec: str, fingerprint: str, max_length: int, device: str) -> Backbone:
        """Return the backbone of ``spec``; refuse it unless its fingerprint is the driver's."""
        from probes.backbone import fingerprint_folder
        from probes.bundled import resolve_model_folder

        _, folder = resolve_model_folder(spec)
        # A folder is fingerprinted before the model is booted: a mismatch is refused at once.
        found = fingerprint_folder(folder) if folder is not None else None
        backbone = None
        if found is None:
            backbone = Backbone.load(spec, device=device, max_length=max_length)
            found = backbone.fingerprint
        if found != fingerprint:
            raise FingerprintMismatchError(
                f"Ray worker on {socket.gethostname()} has backbone {spec!r} with fingerprint "
                f"{found}, but the driver's is {fingerprint}: its weights, config or "
                "transformer-lens/transformers versions differ. Install the same model folder "
                "and package versions on every node of the cluster."
            )
        return backbone or Backbone.load(spec, device=device, max_length=max_length)

    def __call__(self, block: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Return the block's activations: one column per (hook, pooling), rows as given."""
        if self.error is not None:
            raise self.error
        texts = [str(t) for t in block["text"]]
        got = self.backbone.extract(
            texts, self.hook_names, self.poolings, batch_size=self.batch_size, progress=False
        )
        out: dict[str, np.ndarray] = {
            "row": np.asarray(block["row"], dtype=np.int64),
            "n_tokens": got.n_tokens.astype(np.int64),
            "truncated": got.truncated.astype(bool),
        }
        for name, (hook, pooling) in _columns(self.hook_names, self.poolings).items():
            if pooling == TOKENS:
                ragged = got.tokens[hook]
                rows = np.empty(len(texts), dtype=object)
                for i in range(len(texts)):
                    rows[i] = ragged.text(i)
                out[name] = rows
            else:
                out[name] = got.pooled[(hook, pooling)]
        return out


def _columns(hook_names: Sequence[str], poolings: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Return the output column of each (hook, pooling) (hook names are not column-safe)."""
    pairs = [(h, p) for h in hook_names for p in poolings]
    return {f"acts_{i}": pair for i, pair in enumerate(pairs)}


@dataclass(frozen=True)
class _Plan:
    """A validated request: texts, hooks, poolings, their keys, and which shards are missing."""

    backbone: Backbone
    texts: list[str]
    hooks: list[str]
    poolings: list[str]
    store: ActivationStore
    digest: str
    missing: list[tuple[str, str]]
    reused: list[ShardKey]

    def key(self, hook: str, pooling: str) -> ShardKey:
        bb = self.backbone
        return ShardKey(bb.fingerprint, self.digest, hook, pooling, bb.max_length)

    def shards(self) -> dict[ShardKey, Path]:
        return {
            self.key(h, p): _data_path(self.store, self.key(h, p))
            for h in self.hooks
            for p in self.poolings
        }

    def missing_hooks_poolings(self) -> tuple[list[str], list[str]]:
        """Return what one pass computes, as ActivationStore.get does: missing hooks x poolings."""
        hooks = [h for h in self.hooks if any(m[0] == h for m in self.missing)]
        poolings = [p for p in self.poolings if any(m[1] == p for m in self.missing)]
        return hooks, poolings


def _plan(
    backbone: Backbone,
    texts: Sequence[str],
    hook_names: Sequence[str] | None,
    poolings: Sequence[str],
    store: ActivationStore | None,
    batch_size: int,
) -> _Plan:
    """Return the request checked (refused with the fix when unusable) and its missing shards."""
    from probes.datasets import validate_texts

    checked = validate_texts(texts)
    if not checked:
        raise InvalidInputError("No texts given: an extraction needs at least one text.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInputError(f"batch_size must be a positive int. Got {batch_size!r} instead.")
    pools = list(dict.fromkeys(check_pooling(p) for p in poolings))
    if not pools:
        raise InvalidInputError(f"No pooling given; pass one or more of {POOLINGS} or 'tokens'.")
    hooks = list(
        dict.fromkeys(check_hook_names(hook_names or backbone.resid_hooks(), backbone.hook_names))
    )
    store = store if store is not None else ActivationStore()
    plan = _Plan(backbone, checked, hooks, pools, store, texts_hash(checked), [], [])
    for hook in hooks:
        for pooling in pools:
            # load() checks the checksum: a corrupt shard is deleted here and computed again.
            if store.load(plan.key(hook, pooling), len(checked)) is None:
                plan.missing.append((hook, pooling))
            else:
                plan.reused.append(plan.key(hook, pooling))
    return plan


def extract_with_ray(
    backbone: str | Backbone,
    texts: Sequence[str],
    hook_names: Sequence[str] | None = None,
    poolings: Sequence[str] = ("mean",),
    *,
    store: ActivationStore | None = None,
    num_workers: int = 2,
    batch_size: int = 32,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    max_length: int | None = None,
    device: str = "cpu",
    cpus_per_worker: float = 1.0,
    threads_per_worker: int | None = None,
    address: str | None = None,
    dataset_name: str | None = None,
    progress: bool = True,
) -> StoredExtraction:
    """Return the shards of ``texts`` at ``hook_names`` x ``poolings``, extracted on Ray.

    ``backbone`` is a spec (bundled alias, model folder, HF name) or a loaded Backbone: the
    driver uses it to fingerprint and tokenise, and every worker loads the same spec on
    ``device``. Poolings are any of mean/first/last/max and ``"tokens"``. The driver orders the
    texts by token count as ``Backbone.extract`` does and hands each worker blocks of up to
    ``block_rows`` texts, i.e. whole batches of ``batch_size``: every batch is the one local
    extraction forms. Shards already stored are not recomputed. Each worker runs torch on
    ``threads_per_worker`` intra-op threads (default: ``cpus_per_worker`` rounded down, at least
    1); a local extraction on the same CPU with ``torch.set_num_threads`` at that count gives
    bit-identical activations.
    """
    started = time.perf_counter()
    if not isinstance(num_workers, int) or num_workers < 1:
        raise InvalidInputError(f"num_workers must be a positive int. Got {num_workers!r} instead.")
    if threads_per_worker is None:
        threads_per_worker = max(1, int(cpus_per_worker))
    if not isinstance(threads_per_worker, int) or threads_per_worker < 1:
        raise InvalidInputError(
            f"threads_per_worker must be a positive int or None. Got {threads_per_worker!r} instead."
        )
    if not isinstance(block_rows, int) or block_rows < batch_size:
        raise InvalidInputError(
            f"block_rows must be an int of at least batch_size ({batch_size}). "
            f"Got {block_rows!r} instead."
        )
    plan = _plan(
        _driver_backbone(backbone, max_length), texts, hook_names, poolings, store, batch_size
    )
    if not plan.missing:
        return StoredExtraction(
            plan.shards(),
            (),
            tuple(plan.reused),
            plan.store.root,
            len(plan.texts),
            0,
            time.perf_counter() - started,
        )
    hooks, pools = plan.missing_hooks_poolings()
    with _ray_session(address) as ray_address:
        fresh = _run_pipeline(
            plan.backbone,
            plan.texts,
            hooks,
            pools,
            num_workers=num_workers,
            batch_size=batch_size,
            block_rows=block_rows,
            device=device,
            cpus_per_worker=cpus_per_worker,
            threads_per_worker=threads_per_worker,
            progress=progress,
        )
    computed = _save(plan, fresh.shards, fresh.n_tokens, fresh.truncated, dataset_name)
    return StoredExtraction(
        plan.shards(),
        computed,
        tuple(plan.reused),
        plan.store.root,
        len(plan.texts),
        num_workers,
        time.perf_counter() - started,
        ray_address,
        {
            "blocks": fresh.n_blocks,
            "n_truncated": int(fresh.truncated.sum()),
            "threads_per_worker": threads_per_worker,
        },
    )


def extract_locally(
    backbone: Backbone,
    texts: Sequence[str],
    hook_names: Sequence[str] | None = None,
    poolings: Sequence[str] = ("mean",),
    *,
    store: ActivationStore | None = None,
    batch_size: int = 32,
    dataset_name: str | None = None,
    progress: bool = True,
) -> StoredExtraction:
    """Return the shards of ``texts`` extracted in this process (``ActivationStore.get``)."""
    started = time.perf_counter()
    plan = _plan(backbone, texts, hook_names, poolings, store, batch_size)
    if plan.missing:
        plan.store.get(
            backbone,
            plan.texts,
            plan.hooks,
            plan.poolings,
            batch_size=batch_size,
            progress=progress,
            dataset_name=dataset_name,
        )
    return StoredExtraction(
        plan.shards(),
        tuple(plan.key(h, p) for h, p in plan.missing),
        tuple(plan.reused),
        plan.store.root,
        len(plan.texts),
        0,
        time.perf_counter() - started,
    )


def _save(
    plan: _Plan,
    shards: dict[tuple[str, str], np.ndarray | RaggedTokens],
    n_tokens: np.ndarray,
    truncated: np.ndarray,
    dataset_name: str | None,
) -> tuple[ShardKey, ...]:
    """Write the missing shards and the token statistics, as ActivationStore.get writes them."""
    extra = {"backbone": plan.backbone.name, "dataset": dataset_name}
    for hook, pooling in plan.missing:
        plan.store.save(plan.key(hook, pooling), shards[(hook, pooling)], extra)
    stats_key = plan.key(STATS_HOOK, STATS_POOLING)
    if plan.store.load(stats_key, len(plan.texts)) is None:
        table = np.stack([n_tokens, truncated.astype(np.int64)], axis=1)
        plan.store.save(stats_key, table.astype(np.float32), extra)
    return tuple(plan.key(h, p) for h, p in plan.missing)


def _planned_batches(
    bb: Backbone, texts: list[str], batch_size: int, chunk: int = 4096
) -> list[np.ndarray]:
    """Return the batches Backbone.extract forms over the whole corpus (``plan_batches``)."""
    lengths = np.concatenate(
        [bb.tokenize(texts[s : s + chunk]).lengths for s in range(0, len(texts), chunk)]
    )
    return plan_batches(lengths, batch_size)


def _blocks_of_batches(batches: list[np.ndarray], rows_per_block: int) -> list[np.ndarray]:
    """Group consecutive whole batches into blocks of about ``rows_per_block`` rows.

    A block starts at a batch boundary of the corpus-wide plan, so ``Backbone.extract`` on a
    block's texts (already in the plan's order) plans exactly the same batches again.
    """
    blocks: list[np.ndarray] = []
    current: list[np.ndarray] = []
    rows = 0
    for batch in batches:
        if current and rows + len(batch) > rows_per_block:
            blocks.append(np.concatenate(current))
            current, rows = [], 0
        current.append(batch)
        rows += len(batch)
    if current:
        blocks.append(np.concatenate(current))
    return blocks


def _data_path(store: ActivationStore, key: ShardKey) -> Path:
    base = store.root / key.relpath
    return base.with_name(base.name + ".safetensors")


def _driver_backbone(backbone: str | Backbone, max_length: int | None) -> Backbone:
    if isinstance(backbone, Backbone):
        if max_length is not None and max_length != backbone.max_length:
            raise InvalidInputError(
                f"max_length={max_length} differs from the given backbone's "
                f"({backbone.max_length}); load the backbone with that max_length, or omit it."
            )
        if backbone.folder is None and "-random-" in backbone.name:
            raise InvalidInputError(
                f"Backbone {backbone.name!r} has random weights that Ray workers cannot load by "
                "name; extract it locally with ActivationStore.get."
            )
        return backbone
    return Backbone.load(backbone, max_length=max_length)


@dataclass
class _Fresh:
    shards: dict[tuple[str, str], np.ndarray | RaggedTokens]
    n_tokens: np.ndarray
    truncated: np.ndarray
    n_blocks: int


def _run_pipeline(
    bb: Backbone,
    texts: list[str],
    hooks: list[str],
    poolings: list[str],
    *,
    num_workers: int,
    batch_size: int,
    block_rows: int,
    device: str,
    cpus_per_worker: float,
    threads_per_worker: int,
    progress: bool,
) -> _Fresh:
    """Return the activations of every text, extracted by the actor pool, in corpus order."""
    import pyarrow as pa
    import ray.data

    n = len(texts)
    # Whole batches per block, so every batch is the one Backbone.extract forms over the corpus;
    # small enough that every worker gets a block, large enough to amortise a call.
    batches_per_block = max(
        1, min(block_rows // batch_size, math.ceil(n / batch_size / num_workers))
    )
    rows_per_block = batches_per_block * batch_size
    blocks = [
        pa.table({"row": pa.array(rows), "text": pa.array([texts[i] for i in rows])})
        for rows in _blocks_of_batches(_planned_batches(bb, texts, batch_size), rows_per_block)
    ]
    columns = _columns(hooks, poolings)
    dataset = ray.data.from_arrow(blocks).map_batches(
        BlockExtractor,
        batch_size=None,  # one call per block of whole, length-sorted batches
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=num_workers),
        num_cpus=cpus_per_worker,
        num_gpus=1 if device.startswith("cuda") else 0,
        fn_constructor_kwargs={
            "spec": bb.name,  # an alias or HF name resolves on each node; a folder is its path
            "fingerprint": bb.fingerprint,
            "max_length": bb.max_length,
            "device": device,
            "hook_names": hooks,
            "poolings": poolings,
            "batch_size": batch_size,
            "threads": threads_per_worker,
        },
    )
    pooled: dict[str, np.ndarray] = {}
    token_rows: dict[str, list[np.ndarray | None]] = {
        name: [None] * n for name, (_, p) in columns.items() if p == TOKENS
    }
    n_tokens = np.zeros(n, dtype=np.int64)
    truncated = np.zeros(n, dtype=bool)
    seen = np.zeros(n, dtype=bool)
    bar = tqdm(total=n, desc="extracting on ray", unit="text", disable=not progress, leave=False)
    with bar, _quiet_ray_data(), _clean_errors():
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            rows = np.asarray(batch["row"], dtype=np.int64)
            if seen[rows].any():
                raise InvalidInputError(f"Ray returned rows {rows[seen[rows]][:5]} twice.")
            seen[rows] = True
            n_tokens[rows] = batch["n_tokens"]
            truncated[rows] = batch["truncated"]
            for name in columns:
                if name in token_rows:
                    for row, acts in zip(rows, batch[name], strict=True):
                        token_rows[name][row] = np.asarray(acts, dtype=np.float32)
                    continue
                values = np.asarray(batch[name])
                if name not in pooled:
                    pooled[name] = np.empty((n, *values.shape[1:]), dtype=np.float32)
                pooled[name][rows] = values
            bar.update(len(rows))
    if not seen.all():
        raise InvalidInputError(
            f"Ray returned {int(seen.sum())} of {n} rows; rerun the extraction (stored shards "
            "are kept)."
        )
    shards: dict[tuple[str, str], np.ndarray | RaggedTokens] = {}
    for name, (hook, pooling) in columns.items():
        if pooling != TOKENS:
            shards[(hook, pooling)] = pooled[name]
            continue
        per_text = [r for r in token_rows[name] if r is not None]
        offsets = np.zeros(n + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(r) for r in per_text])
        values = np.concatenate(per_text).astype(np.float32)
        shards[(hook, pooling)] = RaggedTokens(values, offsets)
    return _Fresh(shards, n_tokens, truncated, len(blocks))


@contextlib.contextmanager
def _ray_session(address: str | None) -> Iterator[str | None]:
    """Yield the address of the Ray used: the one named, the running one, or a local one."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    if ray.is_initialized():
        if address:
            logger.info("Ray is already initialised in this process; using it, not %s", address)
        yield _current_address(ray)
        return
    runtime_env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}
    try:
        if address:
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
        else:  # "local" always starts a fresh instance, never someone's stale `ray start` one
            ray.init(
                address="local",
                runtime_env=runtime_env,
                include_dashboard=False,
                log_to_driver=False,
            )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address!r}" if address else "a local Ray instance"
        raise InvalidInputError(
            f"Could not connect to {where}: {exc}. Start the head with `ray start --head` and "
            "pass its address (ip:6379, or ray://ip:10001 for Ray Client) as --address or "
            "RAY_ADDRESS; omit both to run on a local Ray."
        ) from exc
    try:
        yield _current_address(ray)
    finally:
        ray.shutdown()


def _current_address(ray: Any) -> str | None:
    try:
        return str(ray.get_runtime_context().gcs_address)
    except Exception:  # older/newer Ray without the attribute: the address is informative only
        return None


@contextlib.contextmanager
def _quiet_ray_data() -> Iterator[None]:
    """Hide Ray Data's own progress bars and start banner (the driver shows one tqdm bar)."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    saved = ctx.enable_progress_bars, ctx.print_on_execution_start
    ray_data_logger = logging.getLogger("ray.data")
    saved_level = ray_data_logger.level
    ctx.enable_progress_bars, ctx.print_on_execution_start = False, False
    ray_data_logger.setLevel(max(saved_level, logging.WARNING))
    try:
        yield
    finally:
        ctx.enable_progress_bars, ctx.print_on_execution_start = saved
        ray_data_logger.setLevel(saved_level)


_WORKER_ERROR = re.compile(r"^(probes|audit)\.errors\.(\w+): (.+)$", re.MULTILINE)


@contextlib.contextmanager
def _clean_errors() -> Iterator[None]:
    """Re-raise a worker's own ProbesError/AuditError, which Ray passes on only as text."""
    try:
        yield
    except (ProbesError, AuditError):
        raise
    except Exception as exc:
        text = str(exc)
        found = _WORKER_ERROR.findall(text)
        if found:
            package, name, message = found[-1]
            errors = importlib.import_module(f"{package}.errors")
            cls = getattr(errors, name, None)
            if isinstance(cls, type) and issubclass(cls, (ProbesError, AuditError)):
                try:
                    error = cls(message)
                except TypeError:  # an error class built from other arguments
                    error = AuditError(message)
                raise error from exc
        if getattr(exc, "actor_init_failed", False):
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            raise AuditError(
                f"A Ray worker could not start the extractor: {lines[-1] if lines else exc!r}. "
                "Install this project (and the backbone) in the same Python environment on "
                "every node of the cluster."
            ) from exc
        raise
