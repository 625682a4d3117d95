"""Screening's cost next to the backbone forward it reads from (``audit bench --only screening``).

Per batch of requests, as the serving path runs it: the serving forward up to the bank's deepest
hook (the baseline); then the screens on that forward's activations right after it
(``Screener.screen_forward``: pooling, every screen's logit, calibration, per-token attributions
and top tokens, each text's result) and each request's decision as the gate makes it (one text
per request: the tenant's thresholds, a decision id); then, reported separately, the batch's log
records built and appended to a real SQLite audit log (durable before it returns). Medians of
the totals over the repeats.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _bank(backbone: Any, quick: bool) -> Any:
    """Return the backbone's latest bank, or a small one fitted now (not saved)."""
    from audit.screening.catalog import default_training_data, fit_default_bank, latest_bank

    bank = latest_bank(backbone)
    if bank is not None:
        return bank
    n_train, n_cal = (200, 150) if quick else (400, 300)
    train, calibration = default_training_data(max_train=n_train, max_calibration=n_cal)
    return fit_default_bank(
        backbone, train=train, calibration=calibration, progress=False, save=False
    )


def bench_screening(ctx: Any) -> list[Any]:
    """Screening compute and the log write, each against the serving forward they follow."""
    from audit.bench import Figure
    from audit.screening.gate import ScreeningGate
    from audit.screening.log import SQLiteAuditLog
    from audit.screening.screener import Screener, ScreenResult

    bb = ctx.backbone
    bank = _bank(bb, ctx.quick)
    screener = Screener(bb, bank)
    n_texts = 64 if ctx.quick else 512
    texts = list(ctx.texts[:n_texts])
    tokens = bb.tokenize(texts)
    order = np.argsort(-tokens.lengths, kind="stable")
    chunks = [order[i : i + ctx.batch_size] for i in range(0, len(texts), ctx.batch_size)]
    batches = []
    for rows in chunks:
        width = int(tokens.lengths[rows].max())
        ids = tokens.input_ids[rows][:, :width]
        mask = tokens.attention_mask[rows][:, :width]
        batches.append((rows, ids, mask))
    folder = Path(tempfile.mkdtemp(prefix="bench-screen-log-"))
    log = SQLiteAuditLog(folder / "audit_log.sqlite3", key=b"\x01" * 32)
    gate = ScreeningGate(screener, log)
    whole = [0] * len(batches)  # per batch: texts the forward read whole (decided right there)

    def run(i: int, spent: dict[str, float]) -> None:
        """Serve batch i: its forward, its screening, its log append, each timed."""
        rows, ids, mask = batches[i]
        batch_texts = [texts[int(r)] for r in rows]
        start = time.perf_counter()
        acts, used = bb.forward_tokens(ids, mask, screener.hooks)
        forward_end = time.perf_counter()
        firsts = screener.screen_forward(acts, used, ids, batch_texts)
        decided = [
            gate.decide([text], tenant_id="bench-tenant", first_windows={0: first})
            for text, first in zip(batch_texts, firsts, strict=True)
        ]
        screen_end = time.perf_counter()
        whole[i] = sum(isinstance(f, ScreenResult) for f in firsts)
        # One append for the batch's records, as a group commit would make it.
        results = [r for [r], _ in decided]
        gate.record(batch_texts, results, [d for _, [d] in decided], "bench-tenant", "bench-head")
        spent["forward"] += forward_end - start
        spent["screen"] += screen_end - forward_end
        spent["log"] += time.perf_counter() - screen_end

    run(0, dict.fromkeys(("forward", "screen", "log"), 0.0))  # first-use costs, untimed
    # Batch by batch, as serving runs them; medians over the repeats of each total.
    keys = ("forward", "screen", "log")
    totals: dict[str, list[float]] = {k: [] for k in keys}
    for _ in range(ctx.repeats):
        spent = dict.fromkeys(keys, 0.0)
        for i in range(len(batches)):
            run(i, spent)
        for k in keys:
            totals[k].append(spent[k])
    seconds = {k: statistics.median(v) for k, v in totals.items()}
    n_logged = log.count()
    verified = log.verify().ok
    log.close()
    notes = {
        "n_texts": len(texts),
        "batch_size": ctx.batch_size,
        "screens": [s.spec.name for s in bank.screens],
        "hooks": list(screener.hooks),
        "bank": bank.version,
        "decided_in_forward": sum(whole),
        "timing": (
            "each batch's serving forward, then screen_forward on its activations and each "
            "request's gate decision (one text per request), then its log records and append; "
            "medians of totals over the repeats"
        ),
    }
    return [
        Figure(
            benchmark="screening",
            name="screening compute / serving forward",
            unit="s",
            ours=seconds["screen"],
            baseline=seconds["forward"],
            baseline_name="backbone forward to the deepest screened layer",
            goal=0.01,
            notes=notes,
            higher_is_better=False,
        ),
        Figure(
            benchmark="screening",
            name="audit-log append (durable) / serving forward",
            unit="s",
            ours=seconds["log"],
            baseline=seconds["forward"],
            baseline_name="backbone forward to the deepest screened layer",
            notes={"records_appended": n_logged, "chain_verified": verified, **notes},
            higher_is_better=False,
        ),
    ]
