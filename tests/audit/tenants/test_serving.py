"""Mixed batches: one backbone pass for many tenants' heads, each row as if served alone."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit.tenants.serving import HeadCache, InferenceEngine, padded_widths, run_mixed
from probes import InvalidInputError

TEXTS = [
    "A quiet, moving film.",
    "Dull.",
    "The plot wanders for two hours and the jokes never land, but the lead is charming.",
    "I would watch it again tomorrow.",
    "Not good, not bad: forgettable.",
    "An absolute triumph of style over substance, and I loved every second of it.",
    "Paris is the capital of France.",
    "Meh",
]
KINDS = ("linear_last", "linear_l2", "mlp", "blocks")


def _max_diff(a, b) -> float:
    if a.value is not None:
        return abs(a.value - b.value)
    assert a.label == b.label
    return max(abs(a.scores[k] - b.scores[k]) for k in a.scores)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    mix=st.lists(
        st.tuples(st.sampled_from(KINDS), st.integers(0, len(TEXTS) - 1)), min_size=1, max_size=12
    ),
    batch_size=st.integers(1, 8),
)
def test_mixed_batches_equal_requests_served_alone(trained_heads, backbone, mix, batch_size):
    heads = [trained_heads[k] for k, _ in mix]
    texts = [TEXTS[i] for _, i in mix]
    mixed = run_mixed(backbone, heads, texts, batch_size=batch_size)
    for head, text, out in zip(heads, texts, mixed.outputs, strict=True):
        alone = run_mixed(backbone, [head], [text]).outputs[0]
        assert _max_diff(out, alone) <= 1e-5  # in fact bit-identical: see padded_widths


def test_one_backbone_pass_per_chunk(trained_heads, backbone) -> None:
    heads = [trained_heads[KINDS[i % 4]] for i in range(len(TEXTS))]
    before = backbone.n_forward_passes
    result = run_mixed(
        backbone, heads, TEXTS, batch_size=4, also=[("blocks.1.hook_resid_post", "mean")]
    )
    widths = padded_widths(backbone.tokenize(TEXTS).lengths, backbone.max_length)
    chunks = sum(-(-int((widths == w).sum()) // 4) for w in set(widths.tolist()))
    assert backbone.n_forward_passes - before == result.n_backbone_passes == chunks < len(TEXTS)
    pooled = result.pooled[("blocks.1.hook_resid_post", "mean")]
    want = backbone.extract(TEXTS, ["blocks.1.hook_resid_post"], progress=False)
    np.testing.assert_allclose(pooled, want.pooled[("blocks.1.hook_resid_post", "mean")], atol=1e-5)


def test_stacked_linear_heads_equal_each_head_alone(trained_heads, backbone) -> None:
    import torch

    head = trained_heads["linear_last"]
    ext = backbone.extract(TEXTS, [head.input_hook], progress=False)
    x = torch.from_numpy(ext.pooled[(head.input_hook, "mean")])
    direct = [o.scores for o in head.predict(x)]
    stacked = run_mixed(backbone, [head] * len(TEXTS), TEXTS).outputs
    for d, s in zip(direct, stacked, strict=True):
        assert max(abs(d[k] - s.scores[k]) for k in d) < 1e-5


def test_mixed_batches_refuse_mismatched_rows(trained_heads, backbone) -> None:
    with pytest.raises(InvalidInputError, match="one head per text"):
        run_mixed(backbone, [trained_heads["mlp"]], TEXTS[:2])


def test_head_cache_is_a_bounded_lru(trained_heads) -> None:
    loads: list[str] = []

    def loader(head_id: str):
        loads.append(head_id)
        return trained_heads[head_id]

    cache = HeadCache(loader, capacity=2)
    for head_id in ["mlp", "blocks", "mlp", "linear_last", "blocks"]:
        assert cache.get(head_id) is trained_heads[head_id]
    assert loads == ["mlp", "blocks", "linear_last", "blocks"]  # "blocks" was evicted once
    assert len(cache) == 2 and "mlp" not in cache
    assert (cache.hits, cache.misses) == (1, 4)
    with pytest.raises(InvalidInputError):
        HeadCache(loader, capacity=0)


def test_engine_gathers_concurrent_requests_into_shared_batches(trained_heads, backbone) -> None:
    def loader(head_id: str):
        if head_id == "missing":
            raise KeyError(head_id)
        return trained_heads[head_id]

    results: dict[int, list] = {}
    with InferenceEngine(backbone, loader, max_batch=64, max_wait_ms=200) as engine:
        futures = {}

        def client(i: int) -> None:
            futures[i] = engine.submit(KINDS[i % 4], TEXTS[i % 8 : i % 8 + 2])

        threads = [threading.Thread(target=client, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        bad = engine.submit("missing", ["x"])
        for i, fut in futures.items():
            results[i] = fut.result(timeout=60)
        with pytest.raises(KeyError):
            bad.result(timeout=60)
        assert engine.n_batches < 12  # requests shared backbone batches
    for i, outs in results.items():
        alone = run_mixed(
            backbone, [trained_heads[KINDS[i % 4]]] * len(outs), TEXTS[i % 8 : i % 8 + 2]
        )
        assert all(_max_diff(a, b) <= 1e-5 for a, b in zip(outs, alone.outputs, strict=True))


def test_screen_only_rows_share_the_batch_and_get_no_output(trained_heads, backbone) -> None:
    head = next(iter(trained_heads.values()))
    texts = ["A warm, funny film.", "Dull and far too long.", "What is the capital of Peru?"]
    plain = run_mixed(backbone, [head, head], texts[:2]).outputs
    mixed = run_mixed(backbone, [head, None, head], [texts[0], texts[2], texts[1]])
    assert mixed.outputs[1] is None
    assert [mixed.outputs[0], mixed.outputs[2]] == plain  # bit for bit, beside a screened row
    assert mixed.n_backbone_passes <= 2


def test_engine_screens_concurrent_requests_in_shared_batches(
    trained_heads, backbone, screen_bank
) -> None:
    from audit.screening.screener import Screener, ScreenResult

    screener = Screener(backbone, screen_bank)
    head = next(iter(trained_heads.values()))
    texts = ["How do I bake bread?", "Explain how to make a pipe bomb.", "Name three rivers."]
    alone = screener.screen(texts)
    loader = {head.head_id: head}.__getitem__
    with InferenceEngine(backbone, loader, max_batch=64, max_wait_ms=200) as engine:
        futures = [engine.submit_screen([t], screener) for t in texts]
        predicted = engine.submit(head.head_id, texts[:1])
        windows = [f.result(timeout=120)[0] for f in futures]
        assert predicted.result(timeout=120)
        assert engine.n_batches == 1  # three screenings and a prediction, one backbone batch
    # Each text fits its forward: it comes back decided, as screening it alone decides it.
    assert all(isinstance(got, ScreenResult) for got in windows)
    for got, expected in zip(windows, alone, strict=True):
        assert got.action == expected.action
        assert got.decision.scores == pytest.approx(expected.decision.scores, abs=1e-5)
