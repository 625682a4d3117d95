"""The batch probe pipeline behind `audit probe` and the app's Concepts page.

Datasets -> layer sweep per dataset (stored activations, saved probes) -> one robustness scorecard
per concept -> report.json/html/md in a run folder. The CLI and the app call the same function,
so a report built from the browser is the report the CLI would write.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from audit.errors import AuditError
from audit.report import build_report, write_report
from probes.backbone import Backbone
from probes.datasets import (
    CONCEPTS,
    ConceptDataset,
    load_dataset,
    load_jsonl,
    match_label_names,
)
from probes.errors import InvalidInputError
from probes.robustness.core import Threshold, load_thresholds
from probes.robustness.scorecard import Scorecard, check_names, context_from_result, run_scorecard
from probes.run import DatasetProbeResult, probe_dataset
from probes.store import ActivationStore

logger = logging.getLogger(__name__)

ProgressFn = Callable[[float, str], None]
"""Called with the share of the run done (0..1) and what starts next."""


@dataclass(frozen=True)
class ProbeSettings:
    """How a probe report is computed; recorded in the report's ``settings``."""

    pooling: str = "mean"
    layers: tuple[int, ...] | None = None  # None: every layer
    probe_kinds: tuple[str, ...] = ("logistic", "mass_mean")
    max_samples: int = 0  # recorded only (0: all rows): datasets arrive already subsampled
    test_size: float = 0.3
    seed: int = 0
    n_boot: int = 1000
    batch_size: int = 32
    scorecard: bool = True
    checks: tuple[str, ...] | None = None  # None: every check
    thresholds: dict[str, Threshold] = field(default_factory=load_thresholds)
    transfer_files: tuple[Path, ...] = ()


@dataclass(frozen=True)
class ProbeRun:
    """A finished probe report: where it was written and what it holds."""

    run_dir: Path
    paths: dict[str, Path]
    report: dict[str, Any]
    results: list[DatasetProbeResult]
    scorecards: list[Scorecard]


def select_datasets(
    concepts: Sequence[str] = (),
    dataset_names: Sequence[str] = (),
    data_files: Sequence[Path] = (),
    *,
    max_samples: int | None = None,
    seed: int = 0,
) -> list[ConceptDataset]:
    """Return the datasets to probe: bundled concepts (or 'all'), bundled datasets, JSONL files.

    Bundled datasets take a stratified subsample of ``max_samples`` rows (None or 0: all rows);
    JSONL files are used whole.
    """
    if not (concepts or dataset_names or data_files):
        raise AuditError(
            "Nothing to probe: give --concept NAME (or 'all'), --dataset NAME or --data FILE.jsonl."
        )
    names: list[str] = []
    for concept in concepts:
        if concept == "all":
            names += [n for group in CONCEPTS.values() for n in group]
        elif concept in CONCEPTS:
            names += list(CONCEPTS[concept])
        else:
            raise AuditError(
                f"Unknown concept {concept!r}. Expected one of: {', '.join(CONCEPTS)}, all."
            )
    names += list(dataset_names)
    datasets = [
        load_dataset(n, max_samples=max_samples or None, seed=seed) for n in dict.fromkeys(names)
    ]
    return datasets + [load_jsonl(p) for p in data_files]


def report_label(datasets: Sequence[ConceptDataset]) -> str:
    """Return the run folder's label: the concepts probed (a custom dataset by its name)."""
    return "+".join(sorted({d.concept if d.concept != "custom" else d.name for d in datasets}))


def select_hooks(backbone: Backbone, layers: Sequence[int] | None) -> list[str]:
    """Return the residual hooks of ``layers`` (every layer when None); raise on a bad layer."""
    hooks = backbone.resid_hooks()
    if layers is None:
        return hooks
    bad = [x for x in layers if not 0 <= x < backbone.n_layers]
    if bad:
        raise InvalidInputError(
            f"Layers {bad} out of range: this backbone has layers 0..{backbone.n_layers - 1}."
        )
    return [hooks[x] for x in layers]


@contextlib.contextmanager
def discard_if_empty(run_dir: Path) -> Iterator[None]:
    """Remove the run folder again if the run fails before writing anything into it."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            run_dir.rmdir()  # only succeeds while the folder is empty
        raise


def _concept_key(dataset: ConceptDataset) -> str:
    return dataset.concept if dataset.concept != "custom" else f"custom:{dataset.name}"


def _concept_groups(results: list[DatasetProbeResult]) -> list[list[DatasetProbeResult]]:
    """Return the results grouped by concept (a custom dataset is its own concept), in order."""
    groups: dict[str, list[DatasetProbeResult]] = {}
    for r in results:
        groups.setdefault(_concept_key(r.dataset), []).append(r)
    return list(groups.values())


def _scorecard(
    backbone: Backbone,
    members: list[DatasetProbeResult],
    store: ActivationStore,
    settings: ProbeSettings,
    checks: list[str],
    progress: bool,
    step: Callable[[str], None],
) -> Scorecard:
    """Return the scorecard of one concept: its first dataset is scored, the others serve transfer."""
    primary = members[0]
    others = [
        match_label_names(load_jsonl(p), primary.dataset.label_names)
        for p in settings.transfer_files
    ]
    ctx = context_from_result(
        backbone,
        primary,
        store=store,
        others=others,
        other_results=members[1:],
        seed=settings.seed,
        n_boot=settings.n_boot,
        batch_size=settings.batch_size,
        progress=progress,
    )
    return run_scorecard(
        ctx,
        thresholds=settings.thresholds,
        checks=checks,
        on_check=lambda name: step(
            f"scoring robustness of {primary.dataset.concept} on {primary.dataset.name}: {name}"
        ),
    )


def run_probe_report(
    backbone: Backbone,
    datasets: Sequence[ConceptDataset],
    run_dir: Path,
    settings: ProbeSettings | None = None,
    *,
    store: ActivationStore | None = None,
    progress: bool = True,
    on_step: ProgressFn | None = None,
) -> ProbeRun:
    """Return the probe report of ``datasets`` on ``backbone``, written into ``run_dir``.

    ``progress`` shows the library's progress bars (stderr); ``on_step`` is told before each
    dataset sweep, each scorecard check and the writing of the report.
    """
    settings = settings or ProbeSettings()
    if not datasets:
        raise AuditError("Nothing to probe: no datasets were given.")
    hooks = select_hooks(backbone, settings.layers)
    checks = check_names(settings.checks) if settings.scorecard else []
    store = store or ActivationStore()
    n_cards = len({_concept_key(d) for d in datasets})
    total = len(datasets) + (len(checks) * n_cards) + 1
    done = 0

    def step(message: str) -> None:
        nonlocal done
        logger.info(message)
        if on_step is not None:
            on_step(done / total, message)
        done += 1

    results = []
    for dataset in datasets:
        step(f"probing {dataset.name} ({dataset.n_samples} texts) on {backbone.name}")
        results.append(
            probe_dataset(
                backbone,
                dataset,
                store=store,
                hook_names=hooks,
                pooling=settings.pooling,
                probe_kinds=settings.probe_kinds,
                test_size=settings.test_size,
                seed=settings.seed,
                n_boot=settings.n_boot,
                batch_size=settings.batch_size,
                progress=progress,
            )
        )
    scorecards = [
        _scorecard(backbone, members, store, settings, checks, progress, step)
        for members in (_concept_groups(results) if checks else [])
    ]
    step("writing the report")
    recorded = {
        "scorecard": settings.scorecard,
        "checks": checks,
        "thresholds": {
            t.name: {"value": t.value, "op": t.op} for t in settings.thresholds.values()
        },
        "transfer_files": [str(p) for p in settings.transfer_files],
        "pooling": settings.pooling,
        "hook_names": hooks,
        "probe_kinds": list(settings.probe_kinds),
        "max_samples": settings.max_samples,
        "test_size": settings.test_size,
        "seed": settings.seed,
        "n_boot": settings.n_boot,
        "batch_size": settings.batch_size,
    }
    report = build_report(backbone, results, recorded, scorecards)
    paths = write_report(report, run_dir)
    if on_step is not None:
        on_step(1.0, "done")
    return ProbeRun(run_dir, paths, report, results, scorecards)


def read_jsonl_upload(filename: str, data: bytes) -> ConceptDataset:
    """Return the dataset in an uploaded JSONL file; errors name the file and line as uploaded."""
    name = Path(filename).name or "upload.jsonl"
    with tempfile.TemporaryDirectory(prefix="audit-upload-") as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        try:
            dataset = load_jsonl(path)
        except InvalidInputError as exc:
            raise InvalidInputError(str(exc).replace(str(path), name)) from None
    return replace(dataset, source=f"upload:{name}")
