"""The compiled screening kernels against plain numpy on random, padded batches."""

from __future__ import annotations

import numpy as np
import pytest

from audit.screening import kernels
from audit.screening.calibration import sigmoid


def _batch(rng: np.random.Generator, rows: int, pos: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    lengths = rng.integers(1, pos + 1, rows)
    mask = (np.arange(pos)[None, :] < lengths[:, None]).astype(np.int64)
    h = rng.standard_normal((rows, pos, d)).astype(np.float32)
    return h, mask


@pytest.mark.parametrize("seed", range(6))
def test_score_matches_numpy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows, pos, d, k, span = 5, 9, 16, 4, 3
    hooks, masks = zip(*[_batch(rng, rows, pos, d) for _ in range(2)], strict=True)
    mask = masks[0]
    hooks = [h.copy() for h in hooks]
    for h in hooks:  # padding must not reach a mean, a maximum or a top token
        h[mask == 0] = 50.0
    weights = [rng.standard_normal((2, d)).astype(np.float32), np.zeros((0, d), np.float32)]
    top_weights = [np.zeros((0, d), np.float32), rng.standard_normal((1, d)).astype(np.float32)]
    # Columns: hook 0's two means, then hook 1's maximum; screens: col 0 + col 2, col 1.
    selector = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    intercepts = np.array([0.5, -0.25])
    ids = rng.integers(0, 12, (rows, pos))
    ids[:, 0] = 11  # a special token at every row's start
    special = np.zeros(12, dtype=bool)
    special[11] = True
    plan = kernels.ScorePlan(weights, top_weights, selector, intercepts, 1, [1], span, k, special)
    logits, spans, n_real, values, top_ids, counts = kernels.score(plan, list(hooks), mask, ids)

    real = mask.astype(bool)
    n = real.sum(1)
    np.testing.assert_array_equal(n_real, n)
    products = hooks[0] @ weights[0].T * real[:, :, None]  # [rows, pos, 2]
    means = products.sum(1) / n[:, None]
    maxima = np.stack([hooks[1][r, : n[r]].max(0) for r in range(rows)])
    columns = np.concatenate([means, maxima @ top_weights[1].T], axis=1)
    np.testing.assert_allclose(logits, columns @ selector + intercepts, rtol=1e-5, atol=1e-5)

    terms = products[:, :, 1] / n[:, None]  # the primary (screen 1) reads column 1
    hidden = ~real | special[ids]
    for r in range(rows):
        shown = np.where(hidden[r], -np.inf, terms[r])
        order = np.argsort(-shown, kind="stable")[: min(k, int((~hidden[r]).sum()))]
        assert counts[r] == len(order)
        np.testing.assert_array_equal(top_ids[r, : counts[r]], ids[r, order])
        np.testing.assert_allclose(values[r, : counts[r]], terms[r, order], rtol=1e-5, atol=1e-6)
        raw = products[r, :, 1]
        if n[r] > span:
            runs = [raw[s : s + span].sum() / span for s in range(n[r] - span + 1)]
            assert spans[r] == pytest.approx(intercepts[1] + max(runs), rel=1e-5, abs=1e-6)
        else:
            assert spans[r] == logits[r, 1]  # no run to read: the whole logit


def test_ties_keep_text_order_and_short_rows_fill_fewer_slots() -> None:
    h = np.ones((1, 4, 2), dtype=np.float32)
    mask = np.array([[1, 1, 1, 0]])
    ids = np.array([[3, 1, 2, 0]])
    plan = kernels.ScorePlan(
        [np.ones((1, 2), np.float32)], [np.zeros((0, 2), np.float32)],
        np.ones((1, 1)), np.zeros(1), 0, [0], 0, 5, np.zeros(4, dtype=bool),
    )  # fmt: skip
    logits, spans, _, values, top_ids, counts = kernels.score(plan, [h], mask, ids)
    assert counts[0] == 3  # three real tokens for five slots
    np.testing.assert_array_equal(top_ids[0, :3], [3, 1, 2])  # equal terms: text order
    assert spans[0] == logits[0, 0]  # no span read (span 0): the whole logit


def test_platt_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((7, 3)) * 900  # past the clip at +-500 too
    slope, intercept = rng.standard_normal(3), rng.standard_normal(3)
    np.testing.assert_allclose(
        kernels.platt(logits, slope, intercept), sigmoid(slope * logits + intercept)
    )
