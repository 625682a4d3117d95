"""Screening's cost next to the backbone forward it reads from (``audit bench --only screening``).

Per batch of requests: the serving forward up to the bank's deepest hook (the baseline), the
screens on that forward's activations (pooling, every screen's logit, calibration, per-token
attributions and top tokens), and, reported separately, appending the batch's decisions to a
real SQLite audit log (durable before it returns). The three run interleaved batch by batch;
medians of the totals over the repeats.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from audit.bench_tenants import interleaved_parts


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
    # Activations of each batch, kept so the screens time only their own work.
    forwards = [bb.forward_tokens(ids, mask, screener.hooks) for _, ids, mask in batches]
    windows = [
        screener.score_windows(acts, used, ids)
        for (acts, used), (_, ids, _) in zip(forwards, batches, strict=True)
    ]
    folder = Path(tempfile.mkdtemp(prefix="bench-screen-log-"))
    log = SQLiteAuditLog(folder / "audit_log.sqlite3", key=b"\x01" * 32)
    gate = ScreeningGate(screener, log)
    records = [
        [
            gate._record(
                texts[int(r)],
                screener.decide([w]),
                gate._decision(screener.decide([w]), gate.flag_threshold(None)),
                "bench-tenant",
                "bench-head",
                "request",
                None,
            )
            for r, w in zip(rows, scored, strict=True)
        ]
        for (rows, _, _), scored in zip(batches, windows, strict=True)
    ]

    def forward(i: int) -> None:
        _, ids, mask = batches[i]
        bb.forward_tokens(ids, mask, screener.hooks)

    def screen(i: int) -> None:
        acts, used = forwards[i]
        screener.decide_all([[w] for w in screener.score_windows(acts, used, batches[i][1])])

    def write(i: int) -> None:
        # Fresh decision ids each time: the log refuses a decision id it already holds.
        from dataclasses import replace

        from audit.screening.log import new_decision_id

        log.append([replace(rec, decision_id=new_decision_id()) for rec in records[i]])

    parts = range(len(batches))
    seconds = interleaved_parts(
        {
            "forward": [functools.partial(forward, i) for i in parts],
            "screen": [functools.partial(screen, i) for i in parts],
            "log": [functools.partial(write, i) for i in parts],
        },
        ctx.repeats,
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
        "timing": "forward, screens and log write interleaved batch by batch; medians of totals",
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
