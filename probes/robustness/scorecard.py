"""The robustness scorecard of one concept: every check, its verdict, and an overall verdict.

Overall verdicts: ``absent`` (no layer decodes the concept above ``presence_auroc``), ``robust``
(every check that ran passed) or ``fragile`` (with the checks that failed).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from tqdm.auto import tqdm

from probes.backbone import Backbone
from probes.datasets import ConceptDataset
from probes.errors import UnknownNameError
from probes.metrics import Estimate
from probes.robustness.core import CheckContext, CheckResult, Threshold, load_thresholds
from probes.run import DatasetProbeResult
from probes.store import ActivationStore

logger = logging.getLogger(__name__)

# Check name -> module under probes.robustness; the order is the scorecard's row order.
CHECK_MODULES: dict[str, str] = {
    "selectivity": "selectivity",
    "random_backbone": "random_backbone",
    "transfer": "transfer",
    "stability": "stability",
    "perturbation": "perturbation",
    "causal": "causal",
    "erasure": "erasure",
    "mdl": "mdl",
    "calibration": "calibration",
    "geometry": "geometry",
}

Overall = Literal["robust", "fragile", "absent"]


@dataclass
class Scorecard:
    """One concept's checks and the overall verdict they add up to."""

    concept: str
    dataset: str
    presence: CheckResult
    checks: list[CheckResult] = field(default_factory=list)
    overall: Overall = "absent"
    failed: list[str] = field(default_factory=list)
    label_names: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "concept": self.concept,
            "dataset": self.dataset,
            "overall": self.overall,
            "failed": self.failed,
            "label_names": self.label_names,
            "checks": [self.presence.as_dict()] + [c.as_dict() for c in self.checks],
        }

    def summary_line(self) -> str:
        """Return a one-line verdict such as 'fragile (failed: transfer, perturbation)'."""
        if self.overall == "fragile":
            return f"fragile (failed: {', '.join(self.failed)})"
        return self.overall


def check_names(names: Sequence[str] | None) -> list[str]:
    """Return the checks to run (all by default); raise on an unknown name."""
    if not names:
        return list(CHECK_MODULES)
    unknown = [n for n in names if n not in CHECK_MODULES]
    if unknown:
        raise UnknownNameError(
            f"Unknown check(s) {unknown}. Known checks: {', '.join(CHECK_MODULES)}."
        )
    return list(dict.fromkeys(names))


def presence_check(ctx: CheckContext, thresholds: dict[str, Threshold]) -> CheckResult:
    """Return the presence check: the best layer's held-out AUROC against ``presence_auroc``."""
    best = ctx.sweep.best("logistic")
    return CheckResult.judged(
        "presence",
        "Present: best-layer held-out AUROC",
        best.auroc,
        f"AUROC at layer {best.layer}",
        thresholds["presence_auroc"],
        details={"layer": best.layer, "hook_name": best.hook_name},
    )


def run_scorecard(
    ctx: CheckContext,
    *,
    thresholds: dict[str, Threshold] | None = None,
    checks: Sequence[str] | None = None,
    on_check: Callable[[str], None] | None = None,
) -> Scorecard:
    """Return the scorecard of ``ctx``'s concept: presence, then every requested check.

    ``on_check(name)`` is called before each check runs, so a caller can show progress.
    """
    thresholds = thresholds or load_thresholds()
    names = check_names(checks)
    presence = presence_check(ctx, thresholds)
    card = Scorecard(
        ctx.dataset.concept, ctx.dataset.name, presence, label_names=list(ctx.dataset.label_names)
    )
    if presence.verdict == "fail":
        reason = "the concept is absent (no layer clears presence_auroc); robustness is moot"
        card.checks = [CheckResult.skipped(n, n, reason) for n in names]
        card.overall = "absent"
        return card
    for name in tqdm(
        names, desc=f"scorecard {ctx.dataset.name}", disable=not ctx.progress, leave=False
    ):
        if on_check is not None:
            on_check(name)
        module = importlib.import_module(f"probes.robustness.{CHECK_MODULES[name]}")
        logger.info("running check %s on %s", name, ctx.dataset.name)
        result: CheckResult = module.run(ctx, thresholds)
        card.checks.append(result)
    card.failed = [c.check for c in card.checks if c.verdict == "fail"]
    card.overall = "fragile" if card.failed else "robust"
    return card


def context_from_result(
    backbone: Backbone,
    result: DatasetProbeResult,
    *,
    store: ActivationStore,
    others: Sequence[ConceptDataset] = (),
    other_results: Sequence[DatasetProbeResult] = (),
    seed: int = 0,
    n_boot: int = 1000,
    batch_size: int = 32,
    progress: bool = True,
) -> CheckContext:
    """Return the check context of a probed dataset: its stored features, split and sweep.

    ``other_results`` are sweeps already run on more datasets of the concept: they serve transfer
    (with ``others``) and are not swept again.
    """
    labels = (result.dataset.labels == 1).astype(int)
    return CheckContext(
        backbone=backbone,
        store=store,
        dataset=result.dataset,
        split=result.split,
        features=result.features,
        labels=labels,
        sweep=result.sweep,
        pooling=result.pooling,
        others=list(others) + [r.dataset for r in other_results],
        other_sweeps={r.dataset.hash: (r.split, r.sweep) for r in other_results},
        seed=seed,
        n_boot=n_boot,
        batch_size=batch_size,
        progress=progress,
    )


def format_figure(figure: Estimate | None) -> str:
    """Return a figure as 'value [low, high]', or '-' when there is none."""
    if figure is None:
        return "-"
    if abs(figure.high - figure.low) < 1e-12:
        return f"{figure.value:.3f}"
    return f"{figure.value:.3f} [{figure.low:.3f}, {figure.high:.3f}]"
