"""The tenant benchmarks in quick mode on the real MiniLM: figures, units, and serving parity."""

from __future__ import annotations

import math

import pytest

from audit.bench import BENCHMARKS, BenchContext, Figure
from audit.bench_tenants import (
    make_head,
    mixed_requests,
    serve_per_group,
    tenant_heads,
)
from audit.tenants.serving import run_mixed


@pytest.fixture(scope="module")
def ctx(backbone) -> BenchContext:
    from probes import load_dataset

    # As `audit bench --quick` builds it.
    texts = list(load_dataset("rotten_tomatoes", max_samples=48, seed=1).texts)
    return BenchContext(backbone, texts, batch_size=32, repeats=2, quick=True)


def _check(figures: list[Figure], benchmark: str, expected: dict[str, str]) -> dict[str, Figure]:
    by_name = {f.name: f for f in figures}
    assert {n: by_name[n].unit for n in expected if n in by_name} == expected
    assert set(by_name) == set(expected)
    for f in figures:
        assert f.benchmark == benchmark
        for value in (f.ours, f.baseline, f.ratio):
            assert math.isfinite(value) and value > 0, f
        assert f.as_dict()["ratio"] == pytest.approx(f.ours / f.baseline)
    return by_name


def test_tenant_benchmarks_are_registered() -> None:
    assert {"tenants_mixed", "heads_cold", "blocks_training"} <= set(BENCHMARKS)
    assert {"extraction", "store_read", "scorecard"} <= set(BENCHMARKS)


def test_tenants_mixed_quick(ctx) -> None:
    figures = _check(
        BENCHMARKS["tenants_mixed"](ctx),
        "tenants_mixed",
        {
            "mixed-tenant batch throughput vs one tenant (texts/s)": "texts/s",
            "mixed-tenant batch throughput vs a pass per tenant (texts/s)": "texts/s",
            "memory: heads + one backbone vs a model copy per tenant (bytes)": "bytes",
        },
    )
    first = figures["mixed-tenant batch throughput vs one tenant (texts/s)"]
    assert first.goal == 0.9 and first.notes["tenants_in_batch"] > 1
    assert first.notes["parity_max_abs_diff"] < 1e-4
    memory = figures["memory: heads + one backbone vs a model copy per tenant (bytes)"]
    assert not memory.higher_is_better and memory.ratio < 1


def test_mixed_outputs_equal_single_tenant_outputs(backbone, ctx) -> None:
    heads = tenant_heads(backbone, 8)
    assert len({h.input_hook for h in heads}) > 1  # layers spread, not all the last block
    requests = mixed_requests(ctx.texts, 24, len(heads))
    row_heads = [heads[int(i)] for i in requests.tenant_index]
    mixed = run_mixed(backbone, row_heads, requests.texts).outputs
    for row in (0, 5, 11, 23):
        alone = run_mixed(backbone, [row_heads[row]], [requests.texts[row]]).outputs[0]
        assert alone.label == mixed[row].label
        for name, score in alone.scores.items():
            assert mixed[row].scores[name] == pytest.approx(score, abs=1e-5)
    looped = serve_per_group(backbone, row_heads, requests.texts)
    for row in range(len(mixed)):
        assert looped[row] == pytest.approx(mixed[row].scores, abs=1e-5)


def test_heads_cold_quick(ctx) -> None:
    figures = _check(
        BENCHMARKS["heads_cold"](ctx),
        "heads_cold",
        {
            **{f"resident bytes per loaded {k} head": "bytes" for k in ("linear", "mlp", "blocks")},
            **{
                f"cold {k} head: first request latency (ms)": "ms"
                for k in ("linear", "mlp", "blocks")
            },
        },
    )
    linear = figures["resident bytes per loaded linear head"]
    assert linear.notes["n_heads"] == 50 and sum(linear.notes["kinds"].values()) == 50
    blocks = figures["resident bytes per loaded blocks head"]
    assert linear.ours < blocks.ours < blocks.baseline


def test_blocks_training_quick(ctx) -> None:
    figures = _check(
        BENCHMARKS["blocks_training"](ctx),
        "blocks_training",
        {
            "blocks head (k=2) training from stored activations (examples/s)": "examples/s",
            "blocks head (k=2) training incl. one-time extraction (examples/s)": "examples/s",
        },
    )
    speedup = figures["blocks head (k=2) training from stored activations (examples/s)"]
    notes = speedup.notes
    assert notes["epochs_run"] == notes["epochs"] == 2 and notes["n_texts"] == 64
    assert notes["ceiling"] == pytest.approx(10 / 6, abs=1e-3)  # MiniLM: (6 + 4) / 6
    assert speedup.goal is None  # the 5x goal is for backbones of 24+ layers
    assert notes["extraction_seconds"] > 0


def test_make_head_blocks_is_a_real_blocks_head(backbone) -> None:
    head = make_head(backbone, kind="blocks", tenant_id="t_0", head_id="h_0", k=1)
    assert head.reads_tokens and head.meta.k == 1
    assert head.input_hook == f"blocks.{backbone.n_layers - 2}.hook_resid_post"
    assert (
        0
        < head.nbytes
        < sum(p.numel() * p.element_size() for p in backbone.bridge.original_model.parameters())
    )
