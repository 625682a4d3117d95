"""``audit screen-eval``: measure request screening on held-out data, beside two baselines.

For each ``--backbone`` the command takes that backbone's latest fitted screen bank (fitting and
saving the default bank on first use, or with ``--refit``), evaluates every screen, a plain
logistic probe and a TF-IDF classifier on the evaluation data (default: the bundled held-out
split; ``--data`` a JSONL file), measures robustness to jailbreak framings, typos and burial in
long benign text, prints a markdown summary (or ``--json``) and writes report.json, report.md and
a self-contained report.html into ``--out``. User errors print one line and exit 1.
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from audit.cli_common import friendly
from audit.errors import AuditError

_friendly = friendly


def default_out_dir(root: Path = Path("reports")) -> Path:
    """Return ``reports/screen-eval-<UTC timestamp>`` (a suffix keeps it new)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = root / f"screen-eval-{stamp}"
    suffix = 1
    while out.exists():
        suffix += 1
        out = root / f"screen-eval-{stamp}-{suffix}"
    return out


def _check_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise AuditError(
            f"Cannot write the report folder {out}: {exc.strerror}. Pass --out with a writable "
            "folder."
        ) from exc


@click.command("screen-eval", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--data",
    "data_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help='JSONL of {"text", "label": "harmful"|"benign", "source"?} lines (default: the bundled '
    "held-out evaluation split).",
)
@click.option(
    "--backbone",
    "backbones",
    multiple=True,
    help="Bundled alias (minilm, smollm2), HF folder or name. Repeatable: compared side by side. "
    "[default: minilm]",
)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option(
    "--max-samples",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Stratified seeded subsample per split (evaluation, and train/calibration when a bank "
    "is fitted now); 0 = all rows. For slow backbones.",
)
@click.option(
    "--max-train",
    type=click.IntRange(min=1),
    default=None,
    help="Subsample the train split to this many rows when fitting a bank (default: "
    "--max-samples, else all).",
)
@click.option(
    "--max-calibration",
    type=click.IntRange(min=1),
    default=None,
    help="Subsample the calibration split when fitting a bank (default: --max-samples, else all).",
)
@click.option(
    "--bank",
    "bank_version",
    default=None,
    help="Evaluate this saved bank version (or prefix) instead of the latest; one --backbone only.",
)
@click.option(
    "--refit",
    is_flag=True,
    help="Fit (and save) a new default bank even when the backbone already has one.",
)
@click.option(
    "--robustness/--no-robustness",
    default=True,
    show_default=True,
    help="Measure jailbreak framings, typos and burial in long benign text.",
)
@click.option(
    "--robustness-max",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Harmful prompts per robustness transform (seeded draw); 0 = every harmful prompt.",
)
@click.option(
    "--n-boot",
    type=click.IntRange(min=100),
    default=1000,
    show_default=True,
    help="Bootstrap resamples for the 95% intervals.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option(
    "--window-tokens",
    type=click.IntRange(min=4),
    default=None,
    help="Screening window in tokens, special tokens included (default: the backbone's "
    "max_length); long texts are screened window by window, the highest score deciding.",
)
@click.option(
    "--stride",
    type=click.IntRange(min=1),
    default=None,
    help="Tokens between window starts (default: half a window).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Folder for report.json/md/html (default: reports/screen-eval-<UTC timestamp>).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the JSON summary on stdout.")
@click.option("--quiet", is_flag=True, help="No progress bars or status lines.")
@_friendly
def screen_eval(
    data_file: Path | None,
    backbones: tuple[str, ...],
    device: str,
    max_samples: int,
    max_train: int | None,
    max_calibration: int | None,
    bank_version: str | None,
    refit: bool,
    robustness: bool,
    robustness_max: int,
    n_boot: int,
    seed: int,
    batch_size: int,
    window_tokens: int | None,
    stride: int | None,
    out: Path | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Evaluate request screening: AUROC, TPR at 1% FPR, block/flag rates, over-refusal,
    per source, robustness, beside a TF-IDF and a plain-probe baseline."""
    names = list(dict.fromkeys(backbones or ("minilm",)))
    if bank_version is not None and (len(names) != 1 or refit):
        raise AuditError(
            "--bank names one backbone's bank: give exactly one --backbone, and no --refit."
        )
    out_dir = out if out is not None else default_out_dir()
    created = not out_dir.exists()
    _check_out(out_dir)  # fail on an unwritable folder before any compute
    try:
        _evaluate(
            out_dir, data_file, names, device, max_samples, max_train, max_calibration,
            bank_version, refit, robustness, robustness_max, n_boot, seed, batch_size,
            window_tokens, stride, as_json, quiet,
        )  # fmt: skip
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                out_dir.rmdir()  # only when still empty: a failed run leaves no empty folder
        raise


def _evaluate(
    out_dir: Path,
    data_file: Path | None,
    names: list[str],
    device: str,
    max_samples: int,
    max_train: int | None,
    max_calibration: int | None,
    bank_version: str | None,
    refit: bool,
    robustness: bool,
    robustness_max: int,
    n_boot: int,
    seed: int,
    batch_size: int,
    window_tokens: int | None,
    stride: int | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Run the evaluation ``screen_eval`` describes and print its summary."""
    from audit.screening.catalog import default_training_data, fit_default_bank, latest_bank
    from audit.screening.evaluate import (
        EvalSettings,
        build_eval_report,
        evaluate_bank,
        load_eval_jsonl,
        render_eval_markdown,
        summary,
        write_eval_report,
    )
    from probes import Backbone
    from probes.requests import load_requests
    from probes.store import ActivationStore

    def say(message: str) -> None:
        if not quiet:
            click.echo(message, err=True)

    data: dict[str, Any]
    if data_file is not None:
        evaluation = load_eval_jsonl(data_file)
        data = {"kind": "jsonl", "path": str(data_file), "description": f"JSONL {data_file}"}
    else:
        evaluation = load_requests(split="evaluation", seed=seed)
        data = {
            "kind": "bundled",
            "path": None,
            "description": "bundled held-out evaluation split (probes.requests, committed hashes)",
        }
    n_full = evaluation.n_samples
    if max_samples and evaluation.n_samples > max_samples:
        evaluation = evaluation.subsample(max_samples, seed=seed)
    data["n_before_subsample"] = n_full
    fit_train = max_train if max_train is not None else (max_samples or None)
    fit_cal = max_calibration if max_calibration is not None else (max_samples or None)
    settings = EvalSettings(
        n_boot=n_boot,
        seed=seed,
        robustness=robustness,
        robustness_max=robustness_max or None,
        batch_size=batch_size,
        window_tokens=window_tokens,
        stride=stride,
        progress=not quiet,
    )
    store = ActivationStore()
    evaluations = []
    for name in names:
        say(f"loading backbone {name}")
        backbone = Backbone.load(name, device=device)
        bank = None if refit else latest_bank(backbone, version=bank_version)
        train = calibration = None
        fitted_now = bank is None
        if bank is None:
            train, calibration = default_training_data(
                seed=seed, max_train=fit_train, max_calibration=fit_cal
            )
            say(
                f"fitting the default screens on {backbone.name} ({train.n_samples} train, "
                f"{calibration.n_samples} calibration rows)"
            )
            bank = fit_default_bank(
                backbone,
                store,
                train=train,
                calibration=calibration,
                seed=seed,
                progress=not quiet,
                save=True,
            )
        say(
            f"evaluating bank {bank.version[:12]} of {backbone.name} on {evaluation.n_samples} "
            "requests"
        )
        evaluations.append(
            evaluate_bank(
                backbone,
                bank,
                evaluation,
                store=store,
                settings=settings,
                train=train,
                calibration=calibration,
                fitted_now=fitted_now,
            )
        )
    report = build_eval_report(
        evaluations,
        evaluation,
        data=data,
        settings={
            "backbones": names,
            "device": device,
            "max_samples": max_samples,
            "max_train": fit_train,
            "max_calibration": fit_cal,
            "bank": bank_version,
            "refit": refit,
            "robustness": robustness,
            "robustness_max": robustness_max,
            "n_boot": n_boot,
            "seed": seed,
            "batch_size": batch_size,
            "window_tokens": window_tokens,
            "stride": stride,
        },
    )
    paths = write_eval_report(report, out_dir)
    if as_json:
        payload = {
            "report_dir": str(out_dir),
            "files": {k: str(v) for k, v in paths.items()},
            **summary(report),
        }
        click.echo(json.dumps(payload, indent=1, default=str))
        return
    click.echo(render_eval_markdown(report))
    click.echo(f"report: {paths['html']}")
