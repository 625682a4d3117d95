"""Screening's cost next to the backbone forward it reads from (``audit bench --only screening``).

Per batch of requests, as the serving path runs it: the serving forward up to the bank's deepest
hook (the baseline), then the screens on that forward's activations right after it (pooling,
every screen's logit, calibration, per-token attributions and top tokens, decisions), then,
reported separately, appending the batch's decisions to a real SQLite audit log (durable before
it returns). Medians of the totals over the repeats.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import replace
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
    from audit.screening.log import SQLiteAuditLog, new_decision_id
    from audit.screening.screener import Screener

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

    def screened(i: int) -> tuple[float, float, list[Any]]:
        """Run batch i as serving does; return (forward s, screening s, results)."""
        _, ids, mask = batches[i]
        start = time.perf_counter()
        acts, used = bb.forward_tokens(ids, mask, screener.hooks)
        mid = time.perf_counter()
        results = screener.decide_all([[w] for w in screener.score_windows(acts, used, ids)])
        return mid - start, time.perf_counter() - mid, results

    flag = gate.flag_threshold(None)
    records = [
        [
            gate._record(
                texts[int(r)],
                result,
                gate._decision(result, flag),
                "bench-tenant",
                "bench-head",
                "request",
                None,
            )
            for r, result in zip(rows, screened(i)[2], strict=True)
        ]
        for i, (rows, _, _) in enumerate(batches)
    ]

    def write(i: int) -> None:
        # Fresh decision ids each time: the log refuses a decision id it already holds.
        log.append([replace(rec, decision_id=new_decision_id()) for rec in records[i]])

    # Batch by batch: the serving forward (the baseline), the screens on its activations right
    # after it (as serving runs them), then the batch's log append. Medians over the repeats of
    # each total.
    keys = ("forward", "screen", "log")
    totals: dict[str, list[float]] = {k: [] for k in keys}
    for _ in range(ctx.repeats):
        spent = dict.fromkeys(keys, 0.0)
        for i in range(len(batches)):
            forward_s, screen_s, _ = screened(i)
            spent["forward"] += forward_s
            spent["screen"] += screen_s
            start = time.perf_counter()
            write(i)
            spent["log"] += time.perf_counter() - start
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
        "timing": (
            "each batch's serving forward, then the screens on its activations, then its log "
            "append; medians of totals over the repeats"
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
