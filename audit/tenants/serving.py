"""Batched multi-tenant inference: one backbone pass for a batch that mixes many tenants' heads.

A batch of (head, text) rows runs the backbone once, up to the deepest hook any head in it reads,
then each head on its own rows: linear heads reading the same pooled input are stacked into one
batched matmul, other heads run on their rows. ``InferenceEngine`` adds what a server needs: a
bounded LRU cache of heads loaded lazily from the registry, and a gathering queue that fills one
backbone batch from concurrent requests or waits a few milliseconds.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from audit.tenants.heads import Head, HeadOutput, PooledHead, load_head
from audit.tenants.registry import NotFoundError
from probes.backbone import Backbone
from probes.errors import InvalidInputError
from probes.hooks import parse_resid
from probes.pooling import pool

logger = logging.getLogger(__name__)

Reader = tuple[str, str]  # (hook_name, pooling) a caller wants pooled for every row


class Tap(Protocol):
    """Reads a chunk's per-token activations (e.g. a screener); ``hooks`` are added to the pass."""

    hooks: Sequence[str]

    def __call__(
        self,
        acts: dict[str, torch.Tensor],
        mask: torch.Tensor,
        input_ids: torch.Tensor,
        rows: np.ndarray,
    ) -> None: ...


@dataclass
class BatchResult:
    """The outputs of a mixed batch, row by row, and any extra pooled activations asked for.

    A row given no head (``None``: screened only) has no output (``None``).
    """

    outputs: list[HeadOutput | None]
    pooled: dict[Reader, np.ndarray] = field(default_factory=dict)  # [n_rows, d_model]
    n_backbone_passes: int = 0


def run_mixed(
    backbone: Backbone,
    heads: Sequence[Head | None],
    texts: Sequence[str],
    *,
    batch_size: int = 64,
    also: Sequence[Reader] = (),
    tap: Tap | None = None,
) -> BatchResult:
    """Return ``heads[i]`` applied to ``texts[i]`` for every row, from one backbone pass per chunk.

    Rows are grouped by padded width (``padded_widths``) into chunks of at most ``batch_size``;
    each chunk runs the backbone once up to the deepest hook needed by its heads (and by
    ``also``: readers such as screening probes that share the same forward), then every head on
    its own rows. Each row's output is bit-for-bit the one it gets when served alone.
    ``tap`` is called once per chunk with that chunk's per-token activations (its ``hooks``
    included in the pass), the mask, the token ids and the chunk's row indices. A row whose head
    is ``None`` runs only for ``tap`` and ``also`` (a request that is screened, not predicted).
    """
    if len(heads) != len(texts):
        raise InvalidInputError(f"Give one head per text: {len(heads)} heads, {len(texts)} texts.")
    if not texts:
        return BatchResult([])
    for head in heads:
        if head is not None and head.meta.backbone_fingerprint != backbone.fingerprint:
            raise InvalidInputError(
                f"Head {head.head_id} belongs to another backbone; load it against this one."
            )
    tokens = backbone.tokenize(texts)  # once: the chunks below slice it
    widths = padded_widths(tokens.lengths, backbone.max_length)
    outputs: list[HeadOutput | None] = [None] * len(texts)
    pooled: dict[Reader, np.ndarray] = {
        r: np.zeros((len(texts), backbone.d_model), dtype=np.float32) for r in also
    }
    passes = 0
    chunks = [
        (int(width), bucket[start : start + batch_size])
        for width in np.unique(widths)[::-1]
        for bucket in [np.flatnonzero(widths == width)]
        for start in range(0, len(bucket), batch_size)
    ]
    for width, rows in chunks:
        chunk_heads = [heads[i] for i in rows]
        hooks = sorted(
            {h.input_hook for h in chunk_heads if h is not None}
            | {r[0] for r in also}
            | set(tap.hooks if tap is not None else ())
        )
        if not hooks:  # screened-only rows with nothing to screen them: no forward to run
            continue
        ids = tokens.input_ids[rows]
        acts, mask = backbone.forward_tokens(ids, tokens.attention_mask[rows], hooks, width=width)
        passes += 1
        if tap is not None:
            tap(acts, mask, ids, rows)
        for reader in also:
            pooled[reader][rows] = pool(acts[reader[0]], mask, reader[1]).float().cpu().numpy()
        for local, out in _apply_heads(chunk_heads, acts, mask).items():
            outputs[int(rows[local])] = out
    return BatchResult(outputs, pooled, passes)


PAD_MULTIPLE = 8


def padded_widths(lengths: np.ndarray, max_length: int) -> np.ndarray:
    """Return each text's padded width: its length rounded up to a multiple of PAD_MULTIPLE.

    Rows are batched only with rows of the same width, so a text's activations (and outputs) are
    the same bits whichever requests share its batch; the rounding keeps the number of distinct
    widths, and so of forward calls, small.
    """
    rounded = -(-np.asarray(lengths) // PAD_MULTIPLE) * PAD_MULTIPLE
    return np.minimum(rounded, max_length)


def _apply_heads(
    heads: Sequence[Head | None], acts: dict[str, torch.Tensor], mask: torch.Tensor
) -> dict[int, HeadOutput]:
    """Return each row's output: stacked linear heads per input, other heads row group by group.

    Rows without a head get no output.
    """
    by_head: dict[int, list[int]] = {}
    for row, head in enumerate(heads):
        if head is not None:
            by_head.setdefault(id(head), []).append(row)
    unique = {id(h): h for h in heads if h is not None}
    results: dict[int, HeadOutput] = {}
    stacks: dict[tuple[str, str, int, str], list[int]] = {}
    for key, head in unique.items():
        if _stackable(head):
            sig = (head.input_hook, head.meta.pooling, head.meta.n_outputs, head.meta.task)
            stacks.setdefault(sig, []).append(key)
            continue
        rows = by_head[key]
        x = acts[head.input_hook][rows]
        m = mask[rows]
        if head.reads_tokens:
            logits = head.logits(x, m)
        else:
            logits = head.logits(pool(x, m, head.meta.pooling))
        results.update(zip(rows, head.outputs(logits), strict=True))
    for (hook, pooling, _n_out, _task), keys in stacks.items():
        rows = [r for k in keys for r in by_head[k]]
        which = torch.tensor([i for i, k in enumerate(keys) for _ in by_head[k]])
        weights = torch.stack([_folded(unique[k])[0] for k in keys])  # [H, out, d]
        biases = torch.stack([_folded(unique[k])[1] for k in keys])  # [H, out]
        with torch.inference_mode():
            x = pool(acts[hook][rows], mask[rows], pooling).float()  # [n, d]
            logits = torch.einsum("nd,nod->no", x, weights[which]) + biases[which]
        start = 0
        for k in keys:
            n = len(by_head[k])
            outs = unique[k].outputs(logits[start : start + n])
            results.update(zip(by_head[k], outs, strict=True))
            start += n
    return results


def _stackable(head: Head) -> bool:
    return head.kind == "linear" and isinstance(head.module, PooledHead)


def _folded(head: Head) -> tuple[torch.Tensor, torch.Tensor]:
    cached = head.__dict__.get("_folded")
    if cached is None:
        assert isinstance(head.module, PooledHead)
        with torch.no_grad():
            cached = tuple(t.detach() for t in head.module.folded_linear())
        head.__dict__["_folded"] = cached
    return cached


def deepest_layer(heads: Sequence[Head]) -> int:
    """Return the deepest block whose output the heads read (-1 for embeddings only)."""
    layers = [parse_resid(h.input_hook) for h in heads]
    return max((p.layer if p.post else p.layer - 1) for p in layers if p is not None)


# -------------------------------------------------------------------------- cache
class HeadCache:
    """A bounded LRU cache of loaded heads; a miss loads the head through ``loader``."""

    def __init__(self, loader: Callable[[str], Head], capacity: int = 256) -> None:
        if capacity < 1:
            raise InvalidInputError(f"capacity must be a positive int. Got {capacity} instead.")
        self._loader = loader
        self.capacity = capacity
        self._heads: OrderedDict[str, Head] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, head_id: str) -> Head:
        """Return the head ``head_id``, loading it (and evicting the least recent) if needed."""
        with self._lock:
            head = self._heads.get(head_id)
            if head is not None:
                self._heads.move_to_end(head_id)
                self.hits += 1
                return head
        head = self._loader(head_id)  # outside the lock: loading may take a while
        with self._lock:
            self.misses += 1
            self._heads[head_id] = head
            self._heads.move_to_end(head_id)
            while len(self._heads) > self.capacity:
                self._heads.popitem(last=False)
        return head

    def evict(self, head_id: str) -> None:
        """Forget ``head_id`` (after it is deleted or retrained)."""
        with self._lock:
            self._heads.pop(head_id, None)

    def __len__(self) -> int:
        return len(self._heads)

    def __contains__(self, head_id: object) -> bool:
        return head_id in self._heads


def registry_loader(backbone: Backbone, registry: Any) -> Callable[[str], Head]:
    """Return a loader of ready heads by id from ``registry`` (an audit.tenants Registry)."""

    def load(head_id: str) -> Head:
        record = registry.head_by_id(head_id)
        if record is None or record.status != "ready" or not record.path:
            raise NotFoundError(f"Head {head_id!r} is not ready to serve.")
        return load_head(record.path, backbone)

    return load


# ------------------------------------------------------------------------- engine
@dataclass
class _Pending:
    head_id: str | None  # None: screened only (its Future is the windows Future)
    texts: list[str]
    future: Future[Any]  # the outputs (list[HeadOutput]), or the windows when screened only
    readers: tuple[Reader, ...] = ()
    pooled_future: Future[dict[Reader, np.ndarray]] | None = None
    screener: Any = None  # an audit.screening Screener: first windows scored from this forward
    windows_future: Future[list[Any]] | None = None


class InferenceEngine:
    """Serves (head, texts) requests from many threads in gathered, mixed backbone batches.

    ``submit`` returns a Future at once; a worker thread takes queued requests until one
    backbone batch (``max_batch`` texts) is full or ``max_wait_ms`` has passed since the first,
    runs them as one mixed batch, and resolves every Future with its own rows.
    """

    def __init__(
        self,
        backbone: Backbone,
        loader: Callable[[str], Head],
        *,
        cache_size: int = 256,
        max_batch: int = 64,
        max_wait_ms: float = 5.0,
    ) -> None:
        self.backbone = backbone
        self.cache = HeadCache(loader, cache_size)
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.n_batches = 0
        self.n_texts = 0

    def start(self) -> InferenceEngine:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="inference", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._thread = None

    def __enter__(self) -> InferenceEngine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def submit(
        self,
        head_id: str,
        texts: Sequence[str],
        readers: Sequence[Reader] = (),
        *,
        screener: Any = None,
    ) -> Future[list[HeadOutput]]:
        """Queue ``texts`` for head ``head_id``; return a Future of their outputs.

        ``readers`` asks for pooled activations of the same forward; they come back through
        ``pooled_future`` of the returned Future (attribute ``pooled``). ``screener`` (a
        Screener) scores each text's first window from the same forward; the WindowScores come
        back through the returned Future's attribute ``windows``.
        """
        if self._thread is None:
            self.start()
        pending = _Pending(head_id, list(texts), Future(), tuple(readers), screener=screener)
        if readers:
            pending.pooled_future = Future()
            pending.future.pooled = pending.pooled_future  # type: ignore[attr-defined]
        if screener is not None:
            pending.windows_future = Future()
            pending.future.windows = pending.windows_future  # type: ignore[attr-defined]
        self._queue.put(pending)
        return pending.future

    def submit_screen(self, texts: Sequence[str], screener: Any) -> Future[list[Any]]:
        """Queue ``texts`` to be screened only; return a Future of what their forward gave.

        They join the next mixed batch like predictions do, so concurrent screening requests
        share backbone passes with each other and with predictions (``screener.screen_forward``
        on each chunk's activations: a finished result per text read whole, else its first
        window's score).
        """
        if self._thread is None:
            self.start()
        windows: Future[list[Any]] = Future()
        pending = _Pending(None, list(texts), windows, screener=screener, windows_future=windows)
        self._queue.put(pending)
        return windows

    def predict(self, head_id: str, texts: Sequence[str]) -> list[HeadOutput]:
        """Return the outputs of ``texts`` for ``head_id``, served through the gathering queue."""
        return self.submit(head_id, texts).result()

    def _gather(self, first: _Pending) -> tuple[list[_Pending], bool]:
        batch, size = [first], len(first.texts)
        deadline = time.monotonic() + self.max_wait
        while size < self.max_batch:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                item = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
            size += len(item.texts)
        return batch, False

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stopping = self._gather(first)
            self._serve(batch)
            if stopping:
                return

    def _serve(self, batch: list[_Pending]) -> None:
        heads: list[Head | None] = []
        texts: list[str] = []
        live: list[_Pending] = []
        for item in batch:
            try:
                head = None if item.head_id is None else self.cache.get(item.head_id)
            except Exception as exc:  # one bad head fails its own request, not the batch
                _resolve(item.future, exc=exc)
                continue
            live.append(item)
            heads += [head] * len(item.texts)
            texts += item.texts
        if not live:
            return
        readers = sorted({r for item in live for r in item.readers})
        screener = next((item.screener for item in live if item.screener is not None), None)
        tap = _WindowTap(screener, texts) if screener is not None else None
        try:
            result = run_mixed(
                self.backbone, heads, texts, batch_size=self.max_batch, also=readers, tap=tap
            )
        except Exception as exc:
            logger.exception("mixed batch of %d texts failed", len(texts))
            for item in live:
                _resolve(item.future, exc=exc)
                if item.windows_future is not None:
                    _resolve(item.windows_future, exc=exc)
            return
        self.n_batches += 1
        self.n_texts += len(texts)
        start = 0
        for item in live:
            stop = start + len(item.texts)
            if item.pooled_future is not None:
                _resolve(
                    item.pooled_future, {r: result.pooled[r][start:stop] for r in item.readers}
                )
            if item.windows_future is not None and tap is not None:
                _resolve(item.windows_future, tap.scores[start:stop])
            if item.head_id is not None:
                _resolve(item.future, result.outputs[start:stop])
            start = stop


class _WindowTap:
    """A Tap that screens every row's forward with a screener, kept by row index.

    Each row gets its text's finished result when the forward read the whole text, else its
    first window's score (``Screener.screen_forward``).
    """

    def __init__(self, screener: Any, texts: Sequence[str]) -> None:
        self.screener = screener
        self.texts = texts
        self.hooks: Sequence[str] = tuple(screener.hooks)
        self.scores: list[Any] = [None] * len(texts)

    def __call__(
        self,
        acts: dict[str, torch.Tensor],
        mask: torch.Tensor,
        input_ids: torch.Tensor,
        rows: np.ndarray,
    ) -> None:
        texts = [self.texts[int(row)] for row in rows]
        scored = self.screener.screen_forward(acts, mask, input_ids, texts)
        for row, score in zip(rows, scored, strict=True):
            self.scores[int(row)] = score


def _resolve(future: Future[Any], result: Any = None, exc: BaseException | None = None) -> None:
    """Settle ``future`` unless its caller cancelled it meanwhile (the worker must live on)."""
    if future.cancelled() or future.done():
        return
    try:
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)
    except InvalidStateError:  # cancelled between the check and the call
        pass
