"""Screening's per-forward work, compiled with numba: one pass per hook, one per row after.

Screening reads activations a forward has just written, and on a CPU that read is bound by memory:
a hook's [rows, pos, d_model] tensor is larger than the core's cache, and the forward's weights
have pushed it out of the shared one. A matrix-vector product per screen column reads the tensor
once per column, and masking and summing the products takes more passes; :func:`score` reads
each real token's vector once and takes its dot product with every mean-pooled column's weights
while it is in cache, then turns the products into per-row means, the primary screen's top tokens
(skipping padding and special tokens) and its strongest span in one pass per row. Right after a
forward every distinct numpy or torch call is slow the first time (its code and data are out of
cache: tens of microseconds for a trivial one), so one compiled call replaces a few dozen.
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np


@numba.njit(cache=True, nogil=True, fastmath=True)
def _read_hook(
    h: np.ndarray,
    mask: np.ndarray,
    weights: np.ndarray,
    products: np.ndarray,
    sums: np.ndarray,
    top: np.ndarray,
    want_top: bool,
) -> None:  # pragma: no cover - compiled; exercised through score
    rows, pos, d = h.shape
    k = weights.shape[0]
    scratch = np.empty(d, dtype=np.float32)
    for r in range(rows):
        seen = False
        # The running maximum alternates between top[r] and scratch: each token's fold writes
        # the other one whole, which compiles to plain vector stores (folding in place becomes
        # masked stores, several times slower on some x86 cores).
        t, spare = top[r], scratch
        in_top = True
        for p in range(pos):
            at = r * pos + p
            if not mask[r, p]:
                for c in range(k):
                    products[c, at] = 0.0
                continue
            x = h[r, p]
            for c in range(k):
                w = weights[c]
                acc = np.float32(0.0)
                for j in range(d):
                    acc += x[j] * w[j]
                products[c, at] = acc
                sums[c, r] += acc
            if want_top:  # the per-dimension maximum, folded in while x is in cache
                if seen:
                    for j in range(d):
                        a = t[j]
                        b = x[j]
                        spare[j] = a if a > b else b
                    t, spare = spare, t
                    in_top = not in_top
                else:
                    t[:] = x
            seen = True
        if want_top:
            if not seen:  # a row with no real token reads its first position
                top[r] = h[r, 0]
            elif not in_top:
                top[r] = t


@numba.njit(cache=True, nogil=True)
def _summarise(
    products: np.ndarray,
    sums: np.ndarray,
    real: np.ndarray,
    mask: np.ndarray,
    ids: np.ndarray,
    is_special: np.ndarray,
    primary: np.ndarray,
    extra: np.ndarray,
    span: int,
    columns: np.ndarray,
    values: np.ndarray,
    top_ids: np.ndarray,
    counts: np.ndarray,
    best: np.ndarray,
) -> None:  # pragma: no cover - compiled; exercised through score
    rows, pos = mask.shape
    n_mean = sums.shape[0]
    k = values.shape[1]
    last = is_special.shape[0] - 1
    raw = np.zeros(pos)
    index = np.zeros(k, dtype=np.int64)
    for r in range(rows):
        n_real = real[r]
        for c in range(n_mean):  # the mean columns come first
            columns[r, c] = sums[c, r] / n_real
        # The primary's per-token terms, and its k largest outside padding and special tokens
        # (inserted after every value at least as large: ties keep text order).
        n = 0
        for p in range(pos):
            acc = 0.0
            for s in primary:
                acc += products[s, r * pos + p]
            raw[p] = acc
            if not mask[r, p] or is_special[min(ids[r, p], last)]:
                continue
            v = np.float32(acc / n_real)
            if extra.shape[0]:
                v += extra[r, p]
            if n == k and not v > values[r, k - 1]:
                continue
            i = min(n, k - 1)
            while i > 0 and v > values[r, i - 1]:
                values[r, i] = values[r, i - 1]
                index[i] = index[i - 1]
                i -= 1
            values[r, i] = v
            index[i] = p
            if n < k:
                n += 1
        counts[r] = n
        for i in range(n):
            top_ids[r, i] = min(ids[r, index[i]], last)
        # The strongest run of `span` tokens inside the real ones (rows no longer: NaN).
        best[r] = np.nan
        if 0 < span < n_real:
            run = 0.0
            for p in range(span):
                run += raw[p]
            top = run
            for start in range(1, n_real - span + 1):
                run += raw[start + span - 1] - raw[start - 1]
                top = max(top, run)
            best[r] = top / span


@numba.njit(cache=True, nogil=True)
def _score(
    hooks: tuple[np.ndarray, ...],
    weights: tuple[np.ndarray, ...],
    starts: np.ndarray,
    top_weights: tuple[np.ndarray, ...],
    top_starts: np.ndarray,
    selector: np.ndarray,
    intercepts: np.ndarray,
    primary_col: int,
    mask: np.ndarray,
    ids: np.ndarray,
    is_special: np.ndarray,
    primary: np.ndarray,
    extra: np.ndarray,
    span: int,
    k: int,
) -> tuple[
    np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray
]:  # pragma: no cover - compiled; exercised through score
    rows, pos = mask.shape
    n_cols, n_screens = selector.shape
    n_mean = 0
    for w in weights:
        n_mean += w.shape[0]
    products = np.empty((n_mean, rows * pos), dtype=np.float32)
    sums = np.zeros((n_mean, rows))
    d = hooks[0].shape[2]
    top = np.empty((rows, d), dtype=np.float32)
    columns = np.zeros((rows, n_cols))
    for i in range(len(hooks)):
        at = starts[i]
        stop = at + weights[i].shape[0]
        want_top = top_weights[i].shape[0] > 0
        _read_hook(hooks[i], mask, weights[i], products[at:stop], sums[at:stop], top, want_top)
        for c in range(top_weights[i].shape[0]):  # max-pooled screens' columns from the maxima
            w = top_weights[i][c]
            for r in range(rows):
                acc = np.float32(0.0)
                for j in range(d):
                    acc += top[r, j] * w[j]
                columns[r, top_starts[i] + c] = acc
    n_real = np.empty(rows, dtype=np.int64)
    for r in range(rows):
        n = 0
        for p in range(pos):
            if mask[r, p]:
                n += 1
        n_real[r] = max(n, 1)
    values = np.zeros((rows, k), dtype=np.float32)
    top_ids = np.zeros((rows, k), dtype=np.int64)
    counts = np.zeros(rows, dtype=np.int64)
    best = np.empty(rows)
    _summarise(
        products, sums, n_real, mask, ids, is_special, primary, extra, span,
        columns, values, top_ids, counts, best,
    )  # fmt: skip
    # Every screen's logit: the read columns through the 0/1 selector, plus the intercepts.
    logits = np.empty((rows, n_screens))
    spans = np.empty(rows)
    for r in range(rows):
        for s in range(n_screens):
            acc = intercepts[s]
            for c in range(n_cols):
                acc += columns[r, c] * selector[c, s]
            logits[r, s] = acc
        # The strongest span's logit; rows no longer than the span keep their whole logit.
        long = not np.isnan(best[r])
        spans[r] = intercepts[primary_col] + best[r] if long else logits[r, primary_col]
    return logits, spans, n_real, values, top_ids, counts


class ScorePlan:
    """What a bank's screens read from a forward, fixed once per screener (see :func:`score`).

    ``weights[i]`` ([k_i, d] float32, k_i may be 0) are the mean-pooled screen columns reading
    the i-th hook and ``top_weights[i]`` the max-pooled ones; columns are numbered means first
    (hook 0's first), then maxima (hook 0's first), and ``selector`` ([columns, screens], 0/1)
    maps them onto the screens, whose ``intercepts`` are added. The primary screen is column
    ``primary_col`` of the logits and reads the mean columns ``primary``; ``span`` is the run
    length of its span read (0: none), ``k`` the top tokens kept per row, ``is_special`` the
    special-token flags by id.
    """

    def __init__(
        self,
        weights: Sequence[np.ndarray],
        top_weights: Sequence[np.ndarray],
        selector: np.ndarray,
        intercepts: np.ndarray,
        primary_col: int,
        primary: Sequence[int],
        span: int,
        k: int,
        is_special: np.ndarray,
    ) -> None:
        self.weights = tuple(np.ascontiguousarray(w, dtype=np.float32) for w in weights)
        self.top_weights = tuple(np.ascontiguousarray(w, dtype=np.float32) for w in top_weights)
        sizes = [w.shape[0] for w in self.weights]
        top_sizes = [w.shape[0] for w in self.top_weights]
        self.starts = np.cumsum([0, *sizes[:-1]]).astype(np.int64)
        self.top_starts = sum(sizes) + np.cumsum([0, *top_sizes[:-1]]).astype(np.int64)
        self.selector = np.ascontiguousarray(selector, dtype=np.float64)
        self.intercepts = np.ascontiguousarray(intercepts, dtype=np.float64)
        self.primary_col = int(primary_col)
        self.primary = np.asarray(primary, dtype=np.int64)
        self.span = int(span)
        self.k = int(k)
        self.is_special = np.ascontiguousarray(is_special, dtype=np.bool_)


_NO_EXTRA = np.zeros((0, 0), dtype=np.float32)


def score(
    plan: ScorePlan,
    hooks: Sequence[np.ndarray],
    mask: np.ndarray,
    ids: np.ndarray,
    extra: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read a forward's hooks once each for a bank's screens and summarise each row, in one call.

    ``hooks[i]`` is the i-th hook's [rows, pos, d] float32 activations, ``mask`` [rows, pos]
    marks real tokens (right-padded) and ``ids`` are the token ids. A token's primary term is the
    sum of the primary's mean columns' products divided by its row's real-token count, plus
    ``extra[r, p]`` (its terms from other poolings) when given. Returns:

    - ``logits`` [rows, screens]: every screen's raw logit, intercept included;
    - ``spans`` [rows]: the primary's logit over its strongest run of ``plan.span`` tokens
      inside the real ones (its whole logit for rows no longer than that);
    - ``n_real`` [rows]: real tokens per row (at least 1);
    - ``values``, ``top_ids`` [rows, k] and ``counts`` [rows]: the row's ``counts[r]`` highest
      primary terms and their token ids, highest first, ties in text order, leaving out padding
      and special tokens (ids past ``is_special``'s end count as, and are given as, its last).
    """
    return _score(  # type: ignore[no-any-return]
        tuple(np.ascontiguousarray(h, dtype=np.float32) for h in hooks),
        plan.weights,
        plan.starts,
        plan.top_weights,
        plan.top_starts,
        plan.selector,
        plan.intercepts,
        plan.primary_col,
        np.ascontiguousarray(mask, dtype=np.int64),
        np.ascontiguousarray(ids, dtype=np.int64),
        plan.is_special,
        plan.primary,
        _NO_EXTRA if extra is None else np.ascontiguousarray(extra, dtype=np.float32),
        plan.span,
        plan.k,
    )


@numba.njit(cache=True, nogil=True)
def _platt(
    x: np.ndarray, slope: np.ndarray, intercept: np.ndarray
) -> np.ndarray:  # pragma: no cover - compiled; exercised through platt
    rows, cols = x.shape
    out = np.empty((rows, cols))
    for r in range(rows):
        for c in range(cols):
            z = min(max(slope[c] * x[r, c] + intercept[c], -500.0), 500.0)
            out[r, c] = 1.0 / (1.0 + np.exp(-z))
    return out


def platt(x: np.ndarray, slope: np.ndarray, intercept: np.ndarray) -> np.ndarray:
    """Return ``sigmoid(slope * x + intercept)`` per column of ``x`` ([rows, cols]), as
    ``calibration.sigmoid`` computes it."""
    return _platt(  # type: ignore[no-any-return]
        np.ascontiguousarray(x, dtype=np.float64),
        np.ascontiguousarray(slope, dtype=np.float64),
        np.ascontiguousarray(intercept, dtype=np.float64),
    )


def warm_up(plan: ScorePlan) -> None:
    """Compile (or load the cached) kernels for ``plan`` now, so that no request waits for them.

    The first compile takes seconds; numba caches it beside this module for later processes.
    """
    d = plan.weights[0].shape[1]
    hooks = [np.zeros((1, 2, d), dtype=np.float32)] * len(plan.weights)
    mask = np.ones((1, 2), dtype=np.int64)
    score(plan, hooks, mask, mask)
    platt(np.zeros((1, 1)), np.ones(1), np.zeros(1))
