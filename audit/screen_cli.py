"""``audit screen fit|list|show``: build, version and inspect screen banks (state in AUDIT_HOME)."""

from __future__ import annotations

from typing import Any

import click

from audit.cli_common import emit_json as _emit_json
from audit.cli_common import friendly as _friendly

screen: click.Group = click.Group(
    "screen",
    help="Fit, list and inspect the screen banks that allow, flag or block requests.",
)


def _backbone(spec: str, max_length: int | None) -> Any:
    from probes.backbone import Backbone

    return Backbone.load(spec, max_length=max_length)


@screen.command("fit")
@click.option("--backbone", "backbone_spec", default="minilm", show_default=True)
@click.option("--max-length", type=click.IntRange(min=2), default=None)
@click.option(
    "--data",
    type=click.Path(dir_okay=False),
    default=None,
    help='JSONL of {"text", "label": "harmful"|"benign"} to fit on instead of the bundled '
    "requests (a seeded 25% of each label calibrates).",
)
@click.option("--max-train", type=click.IntRange(min=4), default=None, help="Subsample train.")
@click.option(
    "--max-calibration", type=click.IntRange(min=4), default=None, help="Subsample calibration."
)
@click.option("--block-fpr", type=float, default=0.01, show_default=True)
@click.option("--flag-fpr", type=float, default=0.05, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--span",
    is_flag=True,
    help="Also fit the long-text span rule (the primary's strongest run of 32 tokens, with "
    "thresholds set on long benign texts made from the calibration split).",
)
@click.option(
    "--segments",
    is_flag=True,
    help="Also fit the multi-paragraph segment rule (each line or paragraph of a text screened "
    "as a request of its own, with thresholds set on long benign texts made from the "
    "calibration split).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the bank's summary as JSON.")
@_friendly
def fit(
    backbone_spec: str,
    max_length: int | None,
    data: str | None,
    max_train: int | None,
    max_calibration: int | None,
    block_fpr: float,
    flag_fpr: float,
    seed: int,
    span: bool,
    segments: bool,
    as_json: bool,
) -> None:
    """Fit the default screens (mean, max and multi-layer logistic) and save a new bank version.

    Without --data the bundled requests' train and calibration splits are used; the held-out
    evaluation split is never read. `audit serve` then starts with the newest bank.
    """
    from audit.screening.catalog import (
        default_training_data,
        fit_default_bank,
        save_to_catalog,
    )
    from audit.screening.screens import describe

    backbone = _backbone(backbone_spec, max_length)
    if data is None:
        train, calibration = default_training_data(
            max_train=max_train, max_calibration=max_calibration, seed=seed
        )
    else:
        train, calibration = _split_jsonl(data, seed)
    bank = fit_default_bank(
        backbone,
        train=train,
        calibration=calibration,
        target_block_fpr=block_fpr,
        target_flag_fpr=flag_fpr,
        seed=seed,
        progress=True,
        save=False,
        span=span,
        segments=segments,
    )
    path = save_to_catalog(bank)
    if as_json:
        _emit_json({**describe(bank), "path": str(path)})
        return
    click.echo(
        f"bank {bank.version} on {bank.backbone}: {len(bank.screens)} screens, saved to {path}"
    )
    click.echo(_table(bank))


@screen.command("add-rule")
@click.argument("version")
@click.option("--backbone", "backbone_spec", default="minilm", show_default=True)
@click.option("--max-length", type=click.IntRange(min=2), default=None)
@click.option("--segments", is_flag=True, help="Fit the multi-paragraph segment rule.")
@click.option("--span", is_flag=True, help="Fit the long-text span rule.")
@click.option(
    "--n-long",
    type=click.IntRange(min=20),
    default=300,
    show_default=True,
    help="Long benign texts made from the calibration split to set the rule's thresholds on.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the new bank's summary as JSON.")
@_friendly
def add_rule(
    version: str,
    backbone_spec: str,
    max_length: int | None,
    segments: bool,
    span: bool,
    n_long: int,
    as_json: bool,
) -> None:
    """Add long-text rules to the saved bank VERSION (a prefix is enough) as a new bank version.

    The screens are not refitted: the rules' thresholds are set on long texts made from the
    calibration split the bank was fitted with (its seed), never on the evaluation split.
    """
    from audit.screening.catalog import (
        default_training_data,
        fit_segment_rule,
        fit_span_rule,
        latest_bank,
        save_to_catalog,
    )
    from audit.screening.screens import describe
    from probes.errors import InvalidInputError

    if not (segments or span):
        raise InvalidInputError("Name the rule to add: --segments, --span or both.")
    backbone = _backbone(backbone_spec, max_length)
    bank = latest_bank(backbone, version)
    if bank is None:
        raise InvalidInputError(
            f"No saved bank {version!r} for {backbone.name}: `audit screen list` shows them."
        )
    _, calibration = default_training_data(seed=bank.training.seed)
    seed = bank.training.seed
    if span:
        bank = fit_span_rule(backbone, bank, calibration, n_long=n_long, seed=seed, progress=True)
    if segments:
        bank = fit_segment_rule(
            backbone, bank, calibration, n_long=n_long, seed=seed, progress=True
        )
    path = save_to_catalog(bank)
    if as_json:
        _emit_json({**describe(bank), "path": str(path)})
        return
    click.echo(f"bank {bank.version} (rules added to {version}) saved to {path}")
    for name, rule in (("span", bank.span), ("segments", bank.segments)):
        if rule is not None:
            click.echo(
                f"{name}: block {rule.block.value:.4f} (long benign FPR "
                f"{rule.block.fpr.value:.3%} of {rule.block.n_benign}), flag {rule.flag.value:.4f}"
            )


def _split_jsonl(path: str, seed: int) -> tuple[Any, Any]:
    """Return a seeded, label-stratified 75/25 train/calibration split of a JSONL file."""
    import numpy as np

    from audit.screening.evaluate import load_eval_jsonl

    requests = load_eval_jsonl(path)
    rng = np.random.default_rng(seed)
    calibration: list[int] = []
    for label in (0, 1):
        rows = np.flatnonzero(requests.labels == label)
        calibration += rng.permutation(rows)[: max(2, len(rows) // 4)].tolist()
    chosen = set(calibration)
    train = [i for i in range(requests.n_samples) if i not in chosen]
    return requests.take(train), requests.take(sorted(chosen))


def _table(bank: Any) -> str:
    lines = [
        "| screen | kind | layers | calibration | block (FPR on calibration) | flag |",
        "|---|---|---|---|---|---|",
    ]
    for s in bank.screens:
        mark = " (primary)" if s.spec.name == bank.primary else ""
        lines.append(
            f"| {s.spec.name}{mark} | {s.spec.kind} | {list(s.spec.layers)} | "
            f"{s.calibration.method} | {s.block.value:.4f} ({s.block.fpr.value:.3%} of "
            f"{s.block.n_benign}) | {s.flag.value:.4f} ({s.flag.fpr.value:.3%}) |"
        )
    return "\n".join(lines)


@screen.command("list")
@click.option("--json", "as_json", is_flag=True)
@_friendly
def list_(as_json: bool) -> None:
    """List the fitted banks of every backbone, newest first."""
    from audit.screening.catalog import list_banks

    entries = list_banks()
    if as_json:
        _emit_json([e.as_dict() for e in entries])
        return
    if not entries:
        click.echo("no screen banks yet: `audit screen fit` (or `audit serve`) fits one")
        return
    click.echo("| version | backbone | created (UTC) | primary | train | calibration |")
    click.echo("|---|---|---|---|---|---|")
    for e in entries:
        click.echo(
            f"| {e.version} | {e.backbone} ({e.fingerprint[:12]}) | {e.created_at[:19]} | "
            f"{e.primary} | {e.n_train} | {e.n_calibration} |"
        )


@screen.command("show")
@click.argument("version", required=False)
@click.option("--backbone", "backbone_spec", default="minilm", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@_friendly
def show(version: str | None, backbone_spec: str, as_json: bool) -> None:
    """Show one bank (default: the backbone's latest): screens, calibration, thresholds."""
    from audit.screening.catalog import latest_bank
    from audit.screening.screens import describe

    bank = latest_bank(_backbone(backbone_spec, None), version)
    if bank is None:
        raise click.ClickException(
            f"No screen bank for {backbone_spec} yet: run `audit screen fit --backbone "
            f"{backbone_spec}`."
        )
    if as_json:
        _emit_json(describe(bank))
        return
    click.echo(f"bank {bank.version} on {bank.backbone}, created {bank.created_at}")
    click.echo(_table(bank))
