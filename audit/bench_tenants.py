"""The tenant benchmarks behind ``audit bench``: mixed-tenant serving, cold heads, blocks training.

- ``tenants_mixed``: one mixed batch over many tenants' linear heads, served by ``run_mixed``,
  against the same texts for one tenant, a backbone pass per tenant group, and 100 model copies.
- ``heads_cold``: heads registered in a real Registry and saved with ``save_head``: resident bytes
  per loaded head against the backbone, and a cold head's first request against a cached one.
- ``blocks_training``: a ``blocks`` head trained from stored activations against the same
  training with the frozen prefix run again for every minibatch.

Heads are built with random weights through the real module classes and ``HeadMeta``: the
figures measure serving and loading, which do not depend on what a head learned.
"""

from __future__ import annotations

import functools
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from torch import nn

from audit.tenants.heads import BlocksHead, Head, HeadMeta, HeadSpec, PooledHead, train_head
from audit.tenants.registry import Registry
from probes.backbone import Backbone
from probes.hooks import resid_post
from probes.pooling import pool

if TYPE_CHECKING:
    from audit.bench import BenchContext, Figure

SERVE_BATCH = 64  # run_mixed's chunk size, the serving engine's default max_batch


# ---------------------------------------------------------------------------- heads
def backbone_nbytes(backbone: Backbone) -> int:
    """Return the bytes of one backbone's parameters (what a full model copy costs)."""
    params = backbone.bridge.original_model.parameters()
    return sum(p.numel() * p.element_size() for p in params)


def make_head(
    backbone: Backbone,
    *,
    kind: str,
    tenant_id: str,
    head_id: str,
    layer: int | None = None,
    k: int = 1,
    n_outputs: int = 2,
    hidden: int = 64,
    seed: int = 0,
) -> Head:
    """Return a real Head of ``kind`` with seeded random weights (blocks: the backbone's own).

    Pooled heads read ``layer``'s resid_post (default: the last block); a blocks head copies the
    last ``k`` blocks and gets a random classifier.
    """
    n = backbone.n_layers
    module: nn.Module
    if kind == "blocks":
        module = BlocksHead(backbone, k, n_outputs, "mean", "classification")
        hook, read_layer = resid_post(n - k - 1), n - 1
        # The copied blocks keep the backbone's weights; only the classifier is new.
        classifier = module.classifier
        trainable = list(classifier.parameters()) if classifier is not None else []
    else:
        read_layer = n - 1 if layer is None else layer
        hook = resid_post(read_layer)
        module = PooledHead(backbone.d_model, n_outputs, hidden if kind == "mlp" else 0)
        trainable = list(module.parameters())
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in trainable:
            param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    for param in module.parameters():
        param.requires_grad_(False)
    meta = HeadMeta(
        head_id=head_id,
        tenant_id=tenant_id,
        kind=kind,
        task="classification",
        input_hook=hook,
        layer=read_layer,
        k=k if kind == "blocks" else 0,
        hidden=hidden if kind == "mlp" else 0,
        d_model=backbone.d_model,
        n_outputs=n_outputs,
        label_names=[f"label_{i}" for i in range(n_outputs)],
        backbone_name=backbone.name,
        backbone_fingerprint=backbone.fingerprint,
    )
    return Head(meta, module)


def tenant_layers(n_layers: int, n_tenants: int) -> list[int]:
    """Return the layer each tenant's linear head reads: 40% the last block, the rest spread."""
    pattern = [n_layers - 1, n_layers - 1, n_layers // 2, n_layers - 2, n_layers // 3]
    return [max(0, pattern[i % len(pattern)]) for i in range(n_tenants)]


def tenant_heads(backbone: Backbone, n_tenants: int, seed: int = 0) -> list[Head]:
    """Return one linear head per tenant, layers spread over the backbone, 2 or 3 labels."""
    layers = tenant_layers(backbone.n_layers, n_tenants)
    return [
        make_head(
            backbone,
            kind="linear",
            tenant_id=f"t_{i:012x}",
            head_id=f"h_{i:012x}",
            layer=layer,
            n_outputs=3 if i % 4 == 3 else 2,
            seed=seed + i,
        )
        for i, layer in enumerate(layers)
    ]


class MixedRequests(NamedTuple):
    """A batch of requests: each row's text and the index of the tenant that sent it."""

    texts: list[str]
    tenant_index: np.ndarray  # [n_requests] int


def mixed_requests(
    texts: Sequence[str], n_requests: int, n_tenants: int, seed: int = 0
) -> MixedRequests:
    """Return ``n_requests`` real texts (cycled) with a seeded, uneven choice of tenant each."""
    rows = [texts[i % len(texts)] for i in range(n_requests)]
    which = np.random.default_rng(seed).integers(0, n_tenants, size=n_requests)
    return MixedRequests(rows, which)


def serve_per_group(
    backbone: Backbone, heads: Sequence[Head], texts: Sequence[str]
) -> list[dict[str, float]]:
    """Return each row's scores with one backbone pass per head group (the loop baseline)."""
    groups: dict[int, list[int]] = {}
    for row, head in enumerate(heads):
        groups.setdefault(id(head), []).append(row)
    scores: list[dict[str, float]] = [{} for _ in texts]
    for rows in groups.values():
        head = heads[rows[0]]
        for start in range(0, len(rows), SERVE_BATCH):
            chunk = rows[start : start + SERVE_BATCH]
            acts, mask = backbone.forward_padded([texts[i] for i in chunk], [head.input_hook])
            x = acts[head.input_hook]
            if head.reads_tokens:
                outs = head.predict(x, mask)
            else:
                outs = head.predict(pool(x, mask, head.meta.pooling))
            for i, out in zip(chunk, outs, strict=True):
                scores[i] = out.scores
    return scores


def interleaved_parts(paths: dict[str, list[Callable[[], None]]], repeats: int) -> dict[str, float]:
    """Return each path's median total seconds, its parts run interleaved (A0 B0 C0 A1 B1 C1 ...).

    A path split into parts of about a second each sees the same machine as the others even when
    neighbours' load changes within a run (whole runs of several seconds each did not). No
    warm-up run: the caller warms the backbone with one short pass.
    """
    totals: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(repeats):
        spent = dict.fromkeys(paths, 0.0)
        for j in range(max(len(parts) for parts in paths.values())):
            for name, parts in paths.items():
                if j < len(parts):
                    start = time.perf_counter()
                    parts[j]()
                    spent[name] += time.perf_counter() - start
        for name, seconds in spent.items():
            totals[name].append(seconds)
    return {name: statistics.median(ts) for name, ts in totals.items()}


def _max_score_diff(a: Sequence[dict[str, float]], b: Sequence[dict[str, float]]) -> float:
    return max(abs(x[name] - y[name]) for x, y in zip(a, b, strict=True) for name in x)


# ---------------------------------------------------------------------- benchmarks
def bench_tenants_mixed(ctx: BenchContext) -> list[Figure]:
    """Mixed batch over many tenants' linear heads against one tenant, a loop, and model copies."""
    from audit.bench import Figure
    from audit.tenants.serving import run_mixed

    bb = ctx.backbone
    n_tenants, n_requests = (8, 32) if ctx.quick else (100, 256)
    heads = tenant_heads(bb, n_tenants)
    texts, which = mixed_requests(ctx.texts, n_requests, n_tenants)
    row_heads = [heads[int(i)] for i in which]
    one = heads[0]  # reads the last block: the same backbone depth as the mixed batch
    # The mixed batch as run_mixed chunks it (sorted by length, SERVE_BATCH rows a pass), each
    # chunk served by one run_mixed call, so that its parts interleave with the baselines'.
    order = np.argsort(-bb.tokenize(texts).lengths, kind="stable")
    chunks = [order[i : i + SERVE_BATCH] for i in range(0, n_requests, SERVE_BATCH)]
    # The loop baseline: one pass per tenant group, the groups split into as many parts.
    tenants = sorted(set(which.tolist()))
    groups = [
        [r for r in range(n_requests) if which[r] in part]
        for part in (set(tenants[j :: len(chunks)]) for j in range(len(chunks)))
    ]
    scores: dict[str, list[dict[str, float]]] = {
        "mixed": [{} for _ in texts],
        "loop": [{} for _ in texts],
    }

    def serve_mixed(rows: np.ndarray) -> None:
        outs = run_mixed(bb, [row_heads[i] for i in rows], [texts[i] for i in rows])
        for i, out in zip(rows, outs.outputs, strict=True):
            if out is not None:  # every row here has a head
                scores["mixed"][int(i)] = out.scores

    def serve_one(rows: np.ndarray) -> None:
        run_mixed(bb, [one] * len(rows), [texts[i] for i in rows])

    def serve_loop(rows: list[int]) -> None:
        got = serve_per_group(bb, [row_heads[i] for i in rows], [texts[i] for i in rows])
        for i, row_scores in zip(rows, got, strict=True):
            scores["loop"][i] = row_scores

    run_mixed(bb, row_heads[:8], texts[:8])  # warm the backbone before timing
    seconds = interleaved_parts(
        {
            "mixed": [functools.partial(serve_mixed, rows) for rows in chunks],
            "one": [functools.partial(serve_one, rows) for rows in chunks],
            "loop": [functools.partial(serve_loop, rows) for rows in groups],
        },
        ctx.repeats,
    )
    # Parity: every row's mixed-batch scores against its own tenant's separate pass.
    parity = _max_score_diff(scores["mixed"], scores["loop"])
    heads_bytes = sum(h.nbytes for h in heads)
    one_backbone = backbone_nbytes(bb)
    notes = {
        "n_tenants": n_tenants,
        "n_requests": n_requests,
        "tenants_in_batch": len(set(which.tolist())),
        "layers": sorted(set(tenant_layers(bb.n_layers, n_tenants))),
        "serve_batch": SERVE_BATCH,
        "timing": "each path in parts (a run_mixed pass, or a share of the tenant groups), "
        "interleaved; medians of the totals",
        "parity_max_abs_diff": parity,
    }
    throughput = {name: n_requests / s for name, s in seconds.items()}
    return [
        Figure(
            "tenants_mixed",
            "mixed-tenant batch throughput vs one tenant (texts/s)",
            "texts/s",
            throughput["mixed"],
            throughput["one"],
            "same texts, one tenant's head",
            0.9,
            notes,
        ),
        Figure(
            "tenants_mixed",
            "mixed-tenant batch throughput vs a pass per tenant (texts/s)",
            "texts/s",
            throughput["mixed"],
            throughput["loop"],
            "backbone pass per tenant group",
            None,
            notes,
        ),
        Figure(
            "tenants_mixed",
            "memory: heads + one backbone vs a model copy per tenant (bytes)",
            "bytes",
            float(heads_bytes + one_backbone),
            float(one_backbone * n_tenants),
            f"{n_tenants} full model copies",
            None,
            {"heads_bytes": heads_bytes, "backbone_bytes": one_backbone, "n_tenants": n_tenants},
            higher_is_better=False,
        ),
    ]


def head_kinds(n_heads: int, seed: int = 0) -> list[str]:
    """Return a seeded mix of kinds: about 1% blocks (k=1), 10% mlp, the rest linear."""
    n_blocks = max(2, n_heads // 100)
    n_mlp = max(4, n_heads // 10)
    kinds = ["blocks"] * n_blocks + ["mlp"] * n_mlp + ["linear"] * (n_heads - n_blocks - n_mlp)
    order = np.random.default_rng(seed).permutation(n_heads)
    return [kinds[int(i)] for i in order]


def register_heads(backbone: Backbone, registry: Registry, kinds: Sequence[str]) -> list[str]:
    """Return the ids of heads of ``kinds`` saved with save_head and marked ready, 10 per tenant."""
    from audit.tenants.heads import save_head
    from probes.store import texts_hash

    corpus_texts = ["a tenant's corpus line", "another line"]
    layers = tenant_layers(backbone.n_layers, len(kinds))
    head_ids: list[str] = []
    tenant_id = corpus_id = ""
    for i, kind in enumerate(kinds):
        if i % 10 == 0:
            tenant_id = registry.create_tenant(f"bench-{i // 10}").tenant.tenant_id
            path = registry.tenant_dir(tenant_id) / "corpus.jsonl"
            rows = [json.dumps({"text": t, "label": j % 2}) for j, t in enumerate(corpus_texts)]
            path.write_text("\n".join(rows) + "\n", encoding="utf-8")
            corpus_id = registry.add_corpus(
                tenant_id,
                n_lines=len(rows),
                label_names=["0", "1"],
                texts_hash=texts_hash(corpus_texts),
                path=path,
            ).corpus_id
        record = registry.add_head(tenant_id, corpus_id=corpus_id, kind=kind)
        head = make_head(
            backbone,
            kind=kind,
            tenant_id=tenant_id,
            head_id=record.head_id,
            layer=layers[i],
            seed=i,
        )
        folder = registry.tenant_dir(tenant_id) / "heads" / record.head_id
        save_head(head, folder)
        meta = json.loads(head.meta.model_dump_json())
        registry.mark_head_ready(record.head_id, path=str(folder), meta=meta)
        head_ids.append(record.head_id)
    return head_ids


def bench_heads_cold(ctx: BenchContext) -> list[Figure]:
    """Resident bytes per loaded head against the backbone; a cold head's request against a warm one."""
    from audit.bench import Figure
    from audit.tenants.serving import HeadCache, registry_loader, run_mixed

    bb = ctx.backbone
    n_heads = 50 if ctx.quick else 1000
    kinds = head_kinds(n_heads)
    text = ctx.texts[0]
    with tempfile.TemporaryDirectory() as tmp, Registry(Path(tmp) / "registry.sqlite3") as registry:
        start = time.perf_counter()
        head_ids = register_heads(bb, registry, kinds)
        register_seconds = time.perf_counter() - start
        cache = HeadCache(registry_loader(bb, registry), capacity=n_heads)
        start = time.perf_counter()
        loaded = [cache.get(h) for h in head_ids]
        load_all_seconds = time.perf_counter() - start
        by_kind: dict[str, list[Head]] = {}
        for head in loaded:
            by_kind.setdefault(head.kind, []).append(head)
        run_mixed(bb, [loaded[0]], [text])  # warm the backbone once
        cold: dict[str, list[float]] = {k: [] for k in by_kind}
        warm: dict[str, list[float]] = {k: [] for k in by_kind}
        for kind, heads in by_kind.items():
            for _ in range(ctx.repeats):
                for head in heads[: 5 if ctx.quick else 10]:
                    # Interleaved per head: evicted (cold: the request loads it from the
                    # registry through the cache), then the same request again (warm: cached).
                    cache.evict(head.head_id)
                    for into in (cold, warm):
                        started = time.perf_counter()
                        run_mixed(bb, [cache.get(head.head_id)], [text])
                        into[kind].append(time.perf_counter() - started)
    one_backbone = backbone_nbytes(bb)
    notes = {
        "n_heads": n_heads,
        "kinds": {k: len(v) for k, v in sorted(by_kind.items())},
        "register_seconds": round(register_seconds, 2),
        "load_all_seconds": round(load_all_seconds, 2),
        "all_heads_bytes": sum(h.nbytes for h in loaded),
        "backbone_bytes": one_backbone,
    }
    figures = []
    for kind in ("linear", "mlp", "blocks"):
        if kind not in by_kind:
            continue
        sizes = [h.nbytes for h in by_kind[kind]]
        figures.append(
            Figure(
                "heads_cold",
                f"resident bytes per loaded {kind} head",
                "bytes",
                float(statistics.median(sizes)),
                float(one_backbone),
                "backbone parameters",
                None,
                {**notes, "n_heads_of_kind": len(sizes)},
                higher_is_better=False,
            )
        )
    for kind in ("linear", "mlp", "blocks"):
        if kind not in cold:
            continue
        figures.append(
            Figure(
                "heads_cold",
                f"cold {kind} head: first request latency (ms)",
                "ms",
                1000 * statistics.median(cold[kind]),
                1000 * statistics.median(warm[kind]),
                "same head cached (warm)",
                None,
                {"n_measured": len(cold[kind]), "text_tokens": int(bb.tokenize([text]).lengths[0])},
                higher_is_better=False,
            )
        )
    return figures


class FullForwardTrainer:
    """The baseline: the same blocks head trained with the frozen prefix run for every minibatch.

    Per minibatch: the prefix up to the head's input hook under no grad (``forward_padded``),
    then the same trainable blocks and classifier with backward; same rows, batch size and
    optimiser as ``train_head``, and the validation rows evaluated after each epoch.
    """

    def __init__(
        self,
        backbone: Backbone,
        texts: Sequence[str],
        labels: np.ndarray,
        spec: HeadSpec,
        train: np.ndarray,
        val: np.ndarray,
    ) -> None:
        self.backbone, self.texts, self.spec = backbone, texts, spec
        self.train_rows, self.val_rows = train, val
        self.hook = resid_post(backbone.n_layers - spec.k - 1)
        torch.manual_seed(spec.seed)
        self.module = BlocksHead(backbone, spec.k, int(labels.max()) + 1, spec.pooling, spec.task)
        params = [p for p in self.module.parameters() if p.requires_grad]
        self.optimiser = torch.optim.AdamW(
            params, lr=spec.lr or 1e-4, weight_decay=spec.weight_decay
        )
        self.rng = np.random.default_rng(spec.seed)
        self.y = torch.from_numpy(labels)

    def _prefix(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            acts, mask = self.backbone.forward_padded(
                [self.texts[int(i)] for i in rows], [self.hook]
            )
        return acts[self.hook].clone(), mask.clone()  # inference tensors cannot enter autograd

    def epoch(self) -> float:
        """Run one epoch of training and validation; return the validation loss."""
        self.module.train()
        order = self.rng.permutation(self.train_rows)
        for start in range(0, len(order), self.spec.batch_size):
            rows = order[start : start + self.spec.batch_size]
            acts, mask = self._prefix(rows)
            loss = nn.functional.cross_entropy(self.module(acts, mask), self.y[rows])
            self.optimiser.zero_grad()
            loss.backward()
            self.optimiser.step()
        self.module.eval()
        total = 0.0
        with torch.no_grad():
            for start in range(0, len(self.val_rows), 256):
                rows = self.val_rows[start : start + 256]
                acts, mask = self._prefix(rows)
                loss = nn.functional.cross_entropy(self.module(acts, mask), self.y[rows])
                total += float(loss) * len(rows)
        return total / len(self.val_rows)


def _split_like_train_head(labels: np.ndarray, spec: HeadSpec) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    # The same seeded, stratified split as train_head's, so both paths see the same rows.
    n = len(labels)
    n_val = max(int(round(n * spec.val_fraction)), len(np.unique(labels)), 1)
    train, val = train_test_split(
        np.arange(n), test_size=n_val, random_state=spec.seed, stratify=labels
    )
    return np.sort(train), np.sort(val)


class TrainingTimes(NamedTuple):
    """Seconds of one side-by-side run: extraction, training from the store, the baseline."""

    extract: float
    stored: float
    full: float
    epochs_run: int


def _time_blocks_training(
    backbone: Backbone, texts: Sequence[str], labels: np.ndarray, spec: HeadSpec
) -> TrainingTimes:
    """Return the times of both paths, interleaved epoch by epoch.

    The baseline's epoch runs in train_head's epoch callback and its time is taken out of
    train_head's: whole runs of a minute each, one after the other, saw neighbours' load
    change in between.
    """
    from probes.store import ActivationStore

    hook = resid_post(backbone.n_layers - spec.k - 1)
    train, val = _split_like_train_head(labels, spec)
    with tempfile.TemporaryDirectory() as tmp:
        store = ActivationStore(tmp)
        start = time.perf_counter()
        store.get(backbone, texts, [hook], ("tokens",), progress=False)
        extract = time.perf_counter() - start
        start = time.perf_counter()
        baseline = FullForwardTrainer(backbone, texts, labels, spec, train, val)
        in_baseline = [time.perf_counter() - start]

        def baseline_epoch(*_: object) -> None:
            began = time.perf_counter()
            baseline.epoch()
            in_baseline.append(time.perf_counter() - began)

        start = time.perf_counter()
        head = train_head(
            backbone,
            store,
            texts,
            labels.tolist(),
            spec,
            tenant_id="t",
            head_id="h",
            progress=False,
            on_epoch=baseline_epoch,
        )
        total = time.perf_counter() - start
    return TrainingTimes(
        extract,
        total - sum(in_baseline[1:]),
        sum(in_baseline),
        int(head.meta.metrics["epochs_run"]),
    )


def bench_blocks_training(ctx: BenchContext) -> list[Figure]:
    """Blocks head (k=2) trained from stored activations against a prefix forward per minibatch."""
    from audit.bench import Figure
    from probes import load_dataset

    bb = ctx.backbone
    n_texts, epochs, repeats = (64, 2, 1) if ctx.quick else (96, 5, 2)
    k = 2
    dataset = load_dataset("rotten_tomatoes", max_samples=n_texts, seed=4)
    texts, labels = list(dataset.texts), np.array(dataset.labels)  # a writable copy
    spec = HeadSpec(kind="blocks", k=k, epochs=epochs, patience=epochs + 1, batch_size=32)
    n_train, n_val = (len(rows) for rows in _split_like_train_head(labels, spec))
    runs = [_time_blocks_training(bb, texts, labels, spec) for _ in range(repeats)]
    n_layers = bb.n_layers
    ceiling = (n_layers + 2 * k) / (3 * k)
    t_stored = statistics.median(r.stored for r in runs)
    t_full = statistics.median(r.full for r in runs)
    t_extract = statistics.median(r.extract for r in runs)
    examples = n_train * epochs
    notes = {
        "n_texts": n_texts,
        "n_train": n_train,
        "n_val": n_val,
        "epochs": epochs,
        "epochs_run": min(r.epochs_run for r in runs),
        "repeats": repeats,
        "k": k,
        "n_layers": n_layers,
        "batch_size": spec.batch_size,
        "ceiling": round(ceiling, 3),
        "ceiling_formula": "(L + 2k) / 3k",
        "timing": "interleaved epoch by epoch (the baseline's epoch in train_head's callback)",
        "extraction_seconds": round(t_extract, 3),
        "stored_train_seconds": round(t_stored, 3),
        "full_forward_train_seconds": round(t_full, 3),
    }
    return [
        Figure(
            "blocks_training",
            f"blocks head (k={k}) training from stored activations (examples/s)",
            "examples/s",
            examples / t_stored,
            examples / t_full,
            "prefix forward per minibatch",
            5.0 if n_layers >= 24 else None,
            notes,
        ),
        Figure(
            "blocks_training",
            f"blocks head (k={k}) training incl. one-time extraction (examples/s)",
            "examples/s",
            examples / (t_stored + t_extract),
            examples / t_full,
            "prefix forward per minibatch",
            None,
            notes,
        ),
    ]
