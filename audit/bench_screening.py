"""Screening's cost next to the backbone forward it reads from (``audit bench --only screening``).

Per batch of requests, as the serving path runs it: the plain serving forward up to the bank's
deepest hook (the baseline); the same forward with the screens reading each hook the moment it
is produced (``Screener.reads``: projections and pooling on fresh activations), then scoring,
calibrating and deciding (top tokens included); and, reported separately, appending the batch's
decisions to a real SQLite audit log (durable before it returns). Screening compute is the time
spent in the reads plus the time after the forward. The three run interleaved batch by batch;
medians of the totals over the repeats. The notes add the screened forward's total less the
plain one's, a cross-check of the reads' cost as the forward sees it.
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

    def screened(i: int) -> tuple[float, float, float, list[Any]]:
        """Run batch i as serving does; return (forward s, reads in it s, after it s, results)."""
        _, ids, mask = batches[i]
        reads = screener.reads()
        start = time.perf_counter()
        acts, used = bb.forward_tokens(ids, mask, screener.hooks, on_hook=reads)
        mid = time.perf_counter()
        results = screener.decide_all([[w] for w in screener.score_windows(acts, used, ids, reads)])
        return mid - start, reads.seconds, time.perf_counter() - mid, results

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
            for r, result in zip(rows, screened(i)[3], strict=True)
        ]
        for i, (rows, _, _) in enumerate(batches)
    ]

    def write(i: int) -> None:
        # Fresh decision ids each time: the log refuses a decision id it already holds.
        log.append([replace(rec, decision_id=new_decision_id()) for rec in records[i]])

    # Batch by batch, interleaved: the plain serving forward (the baseline), the same forward
    # with the screens reading each hook as it is produced and then scoring and deciding, and
    # the batch's log append. Medians over the repeats of each path's total.
    keys = ("forward", "screened_forward", "reads", "after", "log")
    totals: dict[str, list[float]] = {k: [] for k in keys}
    for _ in range(ctx.repeats):
        spent = dict.fromkeys(keys, 0.0)
        for i in range(len(batches)):
            _, ids, mask = batches[i]
            start = time.perf_counter()
            bb.forward_tokens(ids, mask, screener.hooks)
            spent["forward"] += time.perf_counter() - start
            forward_s, reads_s, after_s, _ = screened(i)
            spent["screened_forward"] += forward_s
            spent["reads"] += reads_s
            spent["after"] += after_s
            start = time.perf_counter()
            write(i)
            spent["log"] += time.perf_counter() - start
        for k in keys:
            totals[k].append(spent[k])
    seconds = {k: statistics.median(v) for k, v in totals.items()}
    screen_s = statistics.median(
        [r + a for r, a in zip(totals["reads"], totals["after"], strict=True)]
    )
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
            "plain forward, screened forward (+ scoring and decisions) and log write interleaved "
            "batch by batch; medians of totals over the repeats"
        ),
        "screen_reads_inside_forward_s": round(seconds["reads"], 5),
        "screen_after_forward_s": round(seconds["after"], 5),
        "screened_forward_minus_plain_s": round(
            seconds["screened_forward"] - seconds["forward"], 5
        ),
    }
    return [
        Figure(
            benchmark="screening",
            name="screening compute / serving forward",
            unit="s",
            ours=screen_s,
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
