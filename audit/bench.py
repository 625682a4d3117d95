"""The benchmark runner behind ``audit bench``: every figure is a ratio to a same-run baseline.

Each benchmark measures the project's path and its baseline side by side, interleaved (A B A B ...)
so that drift in the machine's speed hits both, and reports the median of each. Later
capabilities register their benchmark in ``BENCHMARKS``.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from audit.bench_checkpoint import bench_checkpoint_audit
from audit.bench_ray import bench_ray_extraction
from audit.bench_ray_serve import bench_ray_serve
from audit.bench_screening import bench_screening
from audit.bench_serving import bench_serving
from audit.bench_tenants import bench_blocks_training, bench_heads_cold, bench_tenants_mixed
from audit.errors import AuditError
from audit.report import package_versions
from probes.backbone import padding_fraction, plan_batches

logger = logging.getLogger(__name__)


@dataclass
class BenchContext:
    """What every benchmark gets: the backbone, real texts, sizes and repeat counts."""

    backbone: Any
    texts: list[str]
    batch_size: int
    repeats: int
    quick: bool


@dataclass
class Figure:
    """One measured figure: ours against the baseline, as a ratio (higher is better)."""

    benchmark: str
    name: str
    unit: str
    ours: float
    baseline: float
    baseline_name: str
    goal: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    higher_is_better: bool = True

    @property
    def ratio(self) -> float:
        return self.ours / self.baseline if self.baseline else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "name": self.name,
            "unit": self.unit,
            "ours": self.ours,
            "baseline": self.baseline,
            "baseline_name": self.baseline_name,
            "ratio": self.ratio,
            "goal": self.goal,
            "higher_is_better": self.higher_is_better,
            "meets_goal": None
            if self.goal is None
            else bool(
                self.ratio >= self.goal if self.higher_is_better else self.ratio <= self.goal
            ),
            **({"notes": self.notes} if self.notes else {}),
        }


def _interleaved(runs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Return the median seconds of each callable, run interleaved after one warm-up each."""
    for fn in runs.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _bare_hf_model(backbone: Any, depth: int) -> Any:
    """Return a bare HF base model of the backbone, cut to ``depth`` blocks.

    From the backbone's folder when it has one; otherwise (random weights) built from its
    config with the default attention kernel, since weight values do not change the speed.
    """
    import copy

    from transformers import AutoModel

    if backbone.folder is not None:
        model = AutoModel.from_pretrained(str(backbone.folder))
    else:
        config = copy.deepcopy(backbone.bridge.original_model.config)
        config.output_attentions = False
        config._attn_implementation = "sdpa"
        model = AutoModel.from_config(config)
    model = model.to(device=backbone.device, dtype=torch.float32).eval()
    layers = None
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == backbone.n_layers:
            layers = module
            break
    if layers is None:
        raise AuditError("Could not find the block list of the bare HF model.")
    del layers[depth:]
    if hasattr(model.config, "num_hidden_layers"):
        model.config.num_hidden_layers = depth
    return model


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer stopped after this measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_extraction(ctx: BenchContext) -> list[Figure]:
    """Extraction tokens/s of every block's resid_post against a bare HF forward, same batches.

    The bare baseline is a plain ``transformers`` base model (``AutoModel``) of the same weights
    cut to the same blocks, run on exactly the batches ``Backbone.extract`` plans
    (``plan_batches``), under ``inference_mode``. Both timings start from the texts: the
    baseline tokenises them with one bare call of the same HF tokenizer (truncated to
    ``max_length``, right-padded tensors), as ``extract`` tokenises inside its own timing.
    """
    bb = ctx.backbone
    hooks = bb.resid_hooks()
    batch = bb.tokenize(ctx.texts)
    batches = plan_batches(batch.lengths, ctx.batch_size)
    n_tokens = int(batch.lengths.sum())
    bare = _bare_hf_model(bb, bb.n_layers)

    def bare_tokens() -> Any:
        return bb.tokenizer(
            ctx.texts,
            truncation=True,
            max_length=bb.max_length,
            padding=True,
            return_tensors="pt",
        )

    if not torch.equal(bare_tokens()["input_ids"], batch.input_ids):
        raise AuditError("The bare tokenizer call and Backbone.tokenize gave different ids.")

    def run_bare() -> None:
        enc = bare_tokens()
        with torch.inference_mode():
            for idx in batches:
                width = int(batch.lengths[idx].max())
                bare(
                    input_ids=enc["input_ids"][idx, :width].to(bb.device),
                    attention_mask=enc["attention_mask"][idx, :width].to(bb.device),
                )
        _sync(bb.device)

    def run_ours() -> None:
        bb.extract(ctx.texts, hooks, ("mean",), batch_size=ctx.batch_size, progress=False)
        _sync(bb.device)

    def run_bridge() -> None:
        tokens = bb.tokenize(ctx.texts)
        with torch.inference_mode():
            for idx in batches:
                width = int(tokens.lengths[idx].max())
                bb._forward_bridge(
                    tokens.input_ids[idx, :width].to(bb.device),
                    tokens.attention_mask[idx, :width].to(bb.device),
                    hooks,
                )
        _sync(bb.device)

    seconds = _interleaved({"bare": run_bare, "ours": run_ours, "bridge": run_bridge}, ctx.repeats)
    notes = {
        "n_texts": len(ctx.texts),
        "n_tokens": n_tokens,
        "batch_size": ctx.batch_size,
        "n_batches": len(batches),
        "padding_fraction": round(padding_fraction(batch.lengths, batches), 4),
        "hooks": len(hooks),
        "baseline": "transformers AutoModel forward, same weights and blocks, same batches",
        "tokenising": "inside every timing (baseline: one bare HF tokenizer call)",
    }
    figures = [
        Figure(
            "extraction",
            "activation path tokens/s (all resid_post, mean-pooled)",
            "tokens/s",
            n_tokens / seconds["ours"],
            n_tokens / seconds["bare"],
            "bare HF forward",
            0.95,
            notes,
        ),
        Figure(
            "extraction",
            "bridge run_with_cache tokens/s (same hooks)",
            "tokens/s",
            n_tokens / seconds["bridge"],
            n_tokens / seconds["bare"],
            "bare HF forward",
            None,
            notes,
        ),
    ]
    if bb.device.type == "cuda":
        figures += gpu_figures(bb, batch.lengths, batches, seconds["ours"], seconds["bare"])
    return figures


# Dense peak TFLOP/s by dtype and memory bandwidth (TB/s) from vendor spec sheets, matched by a
# substring of torch.cuda.get_device_name(); AUDIT_GPU_PEAK_TFLOPS and AUDIT_GPU_BANDWIDTH_TBS
# override them (e.g. for a GPU missing here, or clocks that differ).
GPU_PEAKS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989.0, "tf32": 494.0, "fp32": 67.0, "bandwidth": 4.8},
    "H100 PCIe": {"bf16": 756.0, "tf32": 378.0, "fp32": 51.0, "bandwidth": 2.0},
    "H100": {"bf16": 989.0, "tf32": 494.0, "fp32": 67.0, "bandwidth": 3.35},
    "A100": {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5, "bandwidth": 2.0},
    "L40S": {"bf16": 362.0, "tf32": 183.0, "fp32": 91.6, "bandwidth": 0.864},
    "L4": {"bf16": 121.0, "tf32": 60.0, "fp32": 30.0, "bandwidth": 0.3},
    "A10": {"bf16": 125.0, "tf32": 62.5, "fp32": 31.2, "bandwidth": 0.6},
}


def gpu_peak(device_name: str, dtype: torch.dtype) -> tuple[float | None, float | None]:
    """Return (peak TFLOP/s for ``dtype``, bandwidth TB/s) of a GPU, None where unknown."""
    key = "fp32"
    if dtype in (torch.bfloat16, torch.float16):
        key = "bf16"
    elif dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        key = "tf32"
    row = next((v for k, v in GPU_PEAKS.items() if k in device_name), {})
    tflops, bandwidth = row.get(key), row.get("bandwidth")
    if os.environ.get("AUDIT_GPU_PEAK_TFLOPS"):
        tflops = float(os.environ["AUDIT_GPU_PEAK_TFLOPS"])
    if os.environ.get("AUDIT_GPU_BANDWIDTH_TBS"):
        bandwidth = float(os.environ["AUDIT_GPU_BANDWIDTH_TBS"])
    return tflops, bandwidth


def forward_cost(
    backbone: Any, lengths: np.ndarray, batches: list[np.ndarray]
) -> tuple[float, float]:
    """Return (FLOPs, bytes) of the block forwards over ``batches``, padded slots included.

    FLOPs: 2 x block parameters per token slot, plus 4 x width x d_model per slot and layer
    for the attention scores and their weighted sum. Bytes: the block weights read once per
    batch plus every block's output written once (a lower bound on traffic).
    """
    blocks = [backbone._original(b) for b in backbone.bridge.blocks]
    params = sum(p.numel() for b in blocks for p in b.parameters())
    itemsize = next(blocks[0].parameters()).element_size()
    flops, traffic = 0.0, 0.0
    for idx in batches:
        width = int(lengths[idx].max())
        slots = len(idx) * width
        flops += 2.0 * params * slots + 4.0 * width * backbone.d_model * slots * backbone.n_layers
        traffic += params * itemsize + slots * backbone.d_model * backbone.n_layers * itemsize
    return flops, traffic


def gpu_figures(
    backbone: Any,
    lengths: np.ndarray,
    batches: list[np.ndarray],
    seconds_ours: float,
    seconds_bare: float,
) -> list[Figure]:
    """Return the achieved fraction of the GPU's matmul peak and memory bandwidth, both paths."""
    name = torch.cuda.get_device_name(backbone.device)
    dtype = next(backbone._plain.parameters()).dtype
    peak, bandwidth = gpu_peak(name, dtype)
    flops, traffic = forward_cost(backbone, lengths, batches)
    notes = {
        "gpu": name,
        "dtype": str(dtype).removeprefix("torch."),
        "tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "forward_tflop": round(flops / 1e12, 3),
        "forward_gb": round(traffic / 1e9, 3),
        "bare_fraction": None,
    }
    figures = []
    if peak:
        notes_flops = {**notes, "bare_fraction": round(flops / seconds_bare / 1e12 / peak, 4)}
        figures.append(
            Figure(
                "extraction",
                "GPU: achieved TFLOP/s of the activation path vs dense peak",
                "TFLOP/s",
                flops / seconds_ours / 1e12,
                peak,
                f"{name} peak ({notes['dtype']}{', tf32' if notes['tf32'] else ''})",
                None,
                notes_flops,
            )
        )
    if bandwidth:
        notes_bw = {**notes, "bare_fraction": round(traffic / seconds_bare / 1e12 / bandwidth, 4)}
        figures.append(
            Figure(
                "extraction",
                "GPU: achieved TB/s (weights + block outputs) vs memory bandwidth",
                "TB/s",
                traffic / seconds_ours / 1e12,
                bandwidth,
                f"{name} memory bandwidth",
                None,
                notes_bw,
            )
        )
    if not figures:
        logger.warning(
            "No peak figures for GPU %r: set AUDIT_GPU_PEAK_TFLOPS and AUDIT_GPU_BANDWIDTH_TBS.",
            name,
        )
    return figures


def mixed_corpus(n_texts: int, seed: int = 0) -> list[str]:
    """Return ``n_texts`` real texts of mixed length: short reviews and longer benign requests.

    Half are Rotten Tomatoes snippets, half benign requests from packages installed with the
    data requirements (GSM8K problems, sycophancy prompts after a persona, BBQ questions),
    shuffled; nothing is downloaded.
    """
    from probes import load_dataset
    from probes.requests import load_requests

    rng = np.random.default_rng(seed)
    reviews = list(load_dataset("rotten_tomatoes", max_samples=n_texts, seed=seed).texts)
    requests = load_requests(["gsm8k", "anthropic_sycophancy", "bbq"]).texts
    picked = [requests[i] for i in rng.permutation(len(requests))[: n_texts - n_texts // 2]]
    texts = reviews[: n_texts // 2] + picked
    return [texts[i] for i in rng.permutation(len(texts))]


def bench_padding(ctx: BenchContext) -> list[Figure]:
    """Padding waste and speed of the planned batches against corpus-order and fixed-size ones.

    On a mixed-length corpus of real texts, the share of token slots that are padding for
    (a) batches in corpus order, (b) fixed-size length-sorted batches and (c) the batches
    ``Backbone.extract`` plans; then tokens/s of the same forward and pooling over (c) against
    (a) and (b).
    """
    from probes.pooling import pool

    bb = ctx.backbone
    texts = mixed_corpus(40 if ctx.quick else 400, seed=3)
    batch = bb.tokenize(texts)
    lengths = batch.lengths
    n_tokens = int(lengths.sum())
    plans = {
        "corpus": [
            np.arange(i, min(i + ctx.batch_size, len(texts)))
            for i in range(0, len(texts), ctx.batch_size)
        ],
        "sorted": plan_batches(lengths, ctx.batch_size, max_padding=None),
        "planned": plan_batches(lengths, ctx.batch_size),
    }
    hooks = [bb.resid_hooks()[-1]]

    def runner(batches: list[np.ndarray]) -> Callable[[], None]:
        def run() -> None:
            for idx in batches:
                width = int(lengths[idx].max())
                acts, mask = bb.forward_tokens(
                    batch.input_ids[idx, :width], batch.attention_mask[idx, :width], hooks
                )
                pool(acts[hooks[0]], mask, "mean").float().cpu()
            _sync(bb.device)

        return run

    seconds = _interleaved({k: runner(v) for k, v in plans.items()}, ctx.repeats)
    waste = {k: round(padding_fraction(lengths, v), 4) for k, v in plans.items()}
    notes = {
        "n_texts": len(texts),
        "n_tokens": n_tokens,
        "lengths_p10_p50_p90_max": [int(x) for x in np.percentile(lengths, [10, 50, 90, 100])],
        "batch_size": ctx.batch_size,
        "padding_fraction": waste,
        "n_batches": {k: len(v) for k, v in plans.items()},
    }
    return [
        Figure(
            "padding",
            "padding share of token slots, planned batches",
            "fraction",
            waste["planned"],
            0.10,
            "goal: 10% of token slots",
            1.0,
            notes,
            higher_is_better=False,
        ),
        Figure(
            "padding",
            "forward tokens/s, planned batches vs corpus-order batches",
            "tokens/s",
            n_tokens / seconds["planned"],
            n_tokens / seconds["corpus"],
            "corpus-order batches",
            None,
            notes,
        ),
        Figure(
            "padding",
            "forward tokens/s, planned batches vs fixed-size sorted batches",
            "tokens/s",
            n_tokens / seconds["planned"],
            n_tokens / seconds["sorted"],
            "fixed-size length-sorted batches",
            None,
            notes,
        ),
    ]


def bench_store_read(ctx: BenchContext) -> list[Figure]:
    """Second read of the same activations from the store against the first extraction."""
    from probes.store import ActivationStore

    bb = ctx.backbone
    first, second = [], []
    forwards_on_reread = 0
    for _ in range(max(1, ctx.repeats // 2)):
        with tempfile.TemporaryDirectory() as tmp:
            store = ActivationStore(tmp)
            start = time.perf_counter()
            store.get(bb, ctx.texts, batch_size=ctx.batch_size, progress=False)
            first.append(time.perf_counter() - start)
            before = bb.n_forward_passes
            start = time.perf_counter()
            store.get(bb, ctx.texts, batch_size=ctx.batch_size, progress=False)
            second.append(time.perf_counter() - start)
            forwards_on_reread += bb.n_forward_passes - before
    t_first, t_second = statistics.median(first), statistics.median(second)
    notes = {"n_texts": len(ctx.texts), "forward_passes_on_reread": forwards_on_reread}
    return [
        Figure(
            "store_read",
            "store re-read speed (texts/s)",
            "texts/s",
            len(ctx.texts) / t_second,
            len(ctx.texts) / t_first,
            "first extraction (compute + write)",
            50.0,
            notes,
        )
    ]


def bench_scorecard(ctx: BenchContext) -> list[Figure]:
    """Each scorecard check's time split into forwards and fitting on stored inputs.

    The baseline is the layer sweep on the same stored activations, measured in the same run:
    each check's fitting time is reported as a multiple of it (lower is better), and the total
    fitting time against the 60 s goal for ~5,000 examples on 2 CPU cores.
    """
    from probes import load_dataset, probe_dataset
    from probes.robustness.scorecard import context_from_result, run_scorecard
    from probes.store import ActivationStore

    n = 200 if ctx.quick else 5000
    n_boot = 200 if ctx.quick else 1000
    dataset = load_dataset("rotten_tomatoes", max_samples=n, seed=2)
    others = [load_dataset("tweets", max_samples=n, seed=2)]
    with tempfile.TemporaryDirectory() as tmp:
        store = ActivationStore(tmp)
        store.get(ctx.backbone, dataset.texts, batch_size=ctx.batch_size, progress=False)
        start = time.perf_counter()
        result = probe_dataset(
            ctx.backbone,
            dataset,
            store=store,
            n_boot=n_boot,
            progress=False,
            probe_dir=Path(tmp) / "probes",
        )
        sweep_seconds = time.perf_counter() - start
        # As `audit probe` does: every dataset of the concept is swept, then the scorecard runs.
        other_results = [
            probe_dataset(
                ctx.backbone,
                d,
                store=store,
                n_boot=n_boot,
                progress=False,
                probe_dir=Path(tmp) / "probes",
            )
            for d in others
        ]
        check_ctx = context_from_result(
            ctx.backbone,
            result,
            store=store,
            other_results=other_results,
            batch_size=ctx.batch_size,
            progress=False,
        )
        card = run_scorecard(check_ctx)
    figures = []
    fit_total = sum(c.fit_seconds for c in card.checks)
    forward_total = sum(c.forward_seconds for c in card.checks)
    for check in card.checks:
        notes = {"forward_seconds": round(check.forward_seconds, 3), "verdict": check.verdict}
        figures.append(
            Figure(
                "scorecard",
                f"{check.check}: fitting time (s)",
                "s",
                check.fit_seconds,
                sweep_seconds,
                "layer sweep fitting (s)",
                None,
                notes,
                higher_is_better=False,
            )
        )
    figures.append(
        Figure(
            "scorecard",
            "all checks: fitting time (s)",
            "s",
            fit_total,
            60.0,
            "goal: 60 s",
            1.0,
            {
                "n_texts": n,
                "forward_seconds": round(forward_total, 2),
                "layers": ctx.backbone.n_layers,
                "overall": card.overall,
            },
            higher_is_better=False,
        )
    )
    return figures


BENCHMARKS: dict[str, Callable[[BenchContext], list[Figure]]] = {
    "extraction": bench_extraction,
    "padding": bench_padding,
    "store_read": bench_store_read,
    "scorecard": bench_scorecard,
    "tenants_mixed": bench_tenants_mixed,
    "heads_cold": bench_heads_cold,
    "blocks_training": bench_blocks_training,
    "screening": bench_screening,
    "checkpoint_audit": bench_checkpoint_audit,
    "serving_load": bench_serving,
    "ray_extraction": bench_ray_extraction,
    "ray_serve": bench_ray_serve,
}
# Benchmarks that run on a Ray cluster (the running one, or a local one they start and stop).
RAY_BENCHMARKS: tuple[str, ...] = ("ray_extraction", "ray_serve")


@dataclass
class BenchRun:
    """A finished benchmark run: its JSON payload, a markdown table and where they were written."""

    payload: dict[str, Any]
    markdown: str
    json_path: Path


def _markdown(payload: dict[str, Any]) -> str:
    lines = [
        f"Benchmarks on {payload['machine']['cpu_count']} CPU(s), device {payload['machine']['device']}, "
        f"backbone {payload['backbone']['name']} ({'quick' if payload['quick'] else 'full'} mode)",
        "",
        "| benchmark | figure | ours | baseline | ratio | goal |",
        "|---|---|---|---|---|---|",
    ]
    for f in payload["figures"]:
        op = ">=" if f["higher_is_better"] else "<="
        verdict = "ok" if f["meets_goal"] else "MISSED"
        goal = "" if f["goal"] is None else f"{op} {f['goal']:g}x {verdict}"
        lines.append(
            f"| {f['benchmark']} | {f['name']} | {_number(f['ours'])} {f['unit']} | "
            f"{_number(f['baseline'])} ({f['baseline_name']}) | {_ratio(f['ratio'])} | {goal} |"
        )
    return "\n".join(lines)


def _number(value: float) -> str:
    """Return a figure for a table: thousands separated, one decimal below 1,000."""
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.1f}"


def _ratio(value: float) -> str:
    """Return a ratio with two decimals, or three significant digits when it is tiny."""
    return f"{value:.2f}x" if abs(value) >= 0.1 else f"{value:.3g}x"


def run_benchmarks(
    *,
    quick: bool = False,
    backbone_spec: str = "minilm",
    device: str = "cpu",
    max_length: int | None = None,
    out: Path = Path("reports/bench"),
    only: list[str] | None = None,
) -> BenchRun:
    """Run the benchmarks (all, or ``only``) and write ``out/<run>/bench.json`` and ``bench.md``."""
    from audit.report import new_run_dir
    from probes import Backbone, load_dataset

    names = only or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise AuditError(f"Unknown benchmark(s) {unknown}; expected {sorted(BENCHMARKS)}.")
    run_dir = new_run_dir(out, "bench-quick" if quick else "bench")
    backbone = Backbone.load(backbone_spec, device=device, max_length=max_length)
    texts = list(load_dataset("rotten_tomatoes", max_samples=48 if quick else 1000, seed=1).texts)
    ctx = BenchContext(backbone, texts, batch_size=32, repeats=2 if quick else 3, quick=quick)
    figures: list[Figure] = []
    wall: dict[str, float] = {}
    for name in names:
        start = time.perf_counter()
        figures += BENCHMARKS[name](ctx)
        wall[name] = round(time.perf_counter() - start, 2)
    payload = {
        "schema_version": 1,
        "created_at": datetime.now(UTC).isoformat(),
        "quick": quick,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": str(backbone.device),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "versions": package_versions(),
        "backbone": backbone.info(),
        "figures": [f.as_dict() for f in figures],
        "wall_seconds": wall,  # each benchmark's own run time, setup included
    }
    markdown = _markdown(payload)
    json_path = run_dir / "bench.json"
    json_path.write_text(json.dumps(payload, indent=1))
    (run_dir / "bench.md").write_text(markdown + "\n")
    return BenchRun(payload, markdown, json_path)
