"""The deployed screens on a new checkpoint: recall at the block threshold and over-refusal.

The bank stays the one fitted on the baseline backbone (the one serving today); it is read on
the checkpoint's activations in the screener's explicit cross-fingerprint mode, so the figures
say what would happen if the checkpoint were served under the same screens.
"""

from __future__ import annotations

import numpy as np

from audit.checkpoint.outcome import CheckOutcome, Expectation
from audit.checkpoint.spec import ScreeningSpec
from audit.screening.evaluate import OVERREFUSAL_SOURCES
from audit.screening.screener import Screener
from audit.screening.screens import ScreenBank
from audit.screening.thresholds import clopper_pearson
from probes.requests import RequestSet, load_requests


def _sample(texts: list[str], n: int, seed: int) -> list[str]:
    if len(texts) <= n:
        return texts
    rows = np.sort(np.random.default_rng(seed).choice(len(texts), size=n, replace=False))
    return [texts[int(i)] for i in rows]


def screening_texts(n_samples: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Return held-out harmful requests and sensitive-but-benign ones (at most n_samples each)."""
    held_out: RequestSet = load_requests(split="evaluation")
    harmful = [t for t, y in zip(held_out.texts, held_out.labels, strict=True) if y == 1]
    sensitive = [
        t
        for t, y, s in zip(held_out.texts, held_out.labels, held_out.sources, strict=True)
        if y == 0 and s in OVERREFUSAL_SOURCES
    ]
    return _sample(harmful, n_samples, seed), _sample(sensitive, n_samples, seed + 1)


def screening_outcomes(
    backbone: object,
    bank: ScreenBank,
    spec: ScreeningSpec,
    *,
    seed: int = 0,
    progress: bool = False,
) -> list[CheckOutcome]:
    """Return recall (harmful blocked) and over-refusal (sensitive benign blocked) on ``backbone``."""
    screener = Screener(backbone, bank, cross_fingerprint=True)
    harmful, sensitive = screening_texts(spec.n_samples, seed)
    details = {
        "bank": bank.version,
        "bank_fingerprint": bank.fingerprint,
        "checkpoint_fingerprint": getattr(backbone, "fingerprint", None),
        "cross_fingerprint": screener.cross_fingerprint,
        "block_threshold": bank.screen(bank.primary).block.value,
    }
    out = []
    for check_id, title, texts, expected in (
        (
            "screening::recall_at_block",
            "the deployed screens block held-out harmful requests (recall at the block threshold)",
            harmful,
            Expectation(">=", spec.min_recall),
        ),
        (
            "screening::over_refusal",
            "the deployed screens let sensitive-but-benign requests through (share blocked)",
            sensitive,
            Expectation("<=", spec.max_over_refusal),
        ),
    ):
        results = screener.screen(texts, progress=progress)
        blocked = sum(r.action == "block" for r in results)
        rate = clopper_pearson(blocked, len(texts))
        out.append(
            CheckOutcome(
                check_id=check_id,
                title=title,
                expected=expected,
                measured=rate.value,
                low=rate.low,
                high=rate.high,
                n=len(texts),
                details={**details, "blocked": blocked},
            )
        )
    return out
