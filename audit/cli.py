"""The ``audit`` command line: probe reports, the activation store, datasets, benchmarks.

Every command has ``--help`` and ``--json`` (machine-readable output on stdout). User errors print
one line on stderr and exit 1; progress and logs go to stderr.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from audit.cli_common import backbone_options, emit_json, friendly
from audit.errors import AuditError

DEFAULT_MAX_SAMPLES = 2000


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log what the library does (to stderr).")
def main(verbose: bool) -> None:
    """Alignment auditing workbench: probe a frozen backbone's concepts and write reports."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@main.command()
@click.option(
    "--concept",
    "concepts",
    multiple=True,
    help="Bundled concept (sentiment, truth, toxicity) or 'all'. Repeatable.",
)
@click.option(
    "--dataset",
    "dataset_names",
    multiple=True,
    help="One bundled dataset by name (see `audit datasets`). Repeatable.",
)
@click.option(
    "--data",
    "data_files",
    multiple=True,
    type=click.Path(path_type=Path),
    help='Your own JSONL of {"text", "label"} lines. Repeatable.',
)
@backbone_options
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("reports"),
    show_default=True,
    help="Folder that receives the run folder.",
)
@click.option(
    "--pooling",
    type=click.Choice(["mean", "first", "last", "max"]),
    default="mean",
    show_default=True,
)
@click.option("--layers", default=None, help="Comma-separated layers to probe (default: all).")
@click.option(
    "--probe",
    "probe_kinds",
    multiple=True,
    type=click.Choice(["logistic", "mass_mean"]),
    help="Probe kinds (default: both).",
)
@click.option(
    "--max-samples",
    type=click.IntRange(min=0),
    default=DEFAULT_MAX_SAMPLES,
    show_default=True,
    help="Stratified subsample per bundled dataset; 0 = all rows. JSONL files are used whole.",
)
@click.option("--test-size", type=click.FloatRange(0.05, 0.95), default=0.3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--n-boot",
    type=click.IntRange(min=100),
    default=1000,
    show_default=True,
    help="Bootstrap resamples for the 95% intervals.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option(
    "--transfer",
    "transfer_files",
    multiple=True,
    type=click.Path(path_type=Path),
    help="JSONL of the same concept to test transfer on (labels matched by name). Repeatable.",
)
@click.option(
    "--scorecard/--no-scorecard",
    default=True,
    show_default=True,
    help="Run the robustness scorecard for each concept.",
)
@click.option(
    "--checks",
    default=None,
    help="Comma-separated scorecard checks (default: all; see `audit checks`).",
)
@click.option(
    "--thresholds",
    "thresholds_file",
    type=click.Path(path_type=Path),
    default=None,
    help="TOML/JSON file of scorecard thresholds (name = value).",
)
@click.option(
    "--threshold",
    "threshold_overrides",
    multiple=True,
    help="Override one threshold: NAME=VALUE. Repeatable.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@friendly
def probe(
    concepts: tuple[str, ...],
    dataset_names: tuple[str, ...],
    data_files: tuple[Path, ...],
    backbone_spec: str,
    device: str,
    max_length: int | None,
    out: Path,
    pooling: str,
    layers: str | None,
    probe_kinds: tuple[str, ...],
    max_samples: int,
    test_size: float,
    seed: int,
    n_boot: int,
    batch_size: int,
    transfer_files: tuple[Path, ...],
    scorecard: bool,
    checks: str | None,
    thresholds_file: Path | None,
    threshold_overrides: tuple[str, ...],
    as_json: bool,
    quiet: bool,
) -> None:
    """Probe concepts layer by layer, score their robustness, write reports/<run>/report.*"""
    from audit.probe_run import (
        ProbeSettings,
        discard_if_empty,
        report_label,
        run_probe_report,
        select_datasets,
    )
    from audit.report import new_run_dir
    from probes import Backbone
    from probes.errors import InvalidInputError
    from probes.robustness import load_thresholds

    datasets = select_datasets(
        concepts, dataset_names, data_files, max_samples=max_samples or None, seed=seed
    )
    chosen: tuple[int, ...] | None = None
    if layers:
        try:
            chosen = tuple(int(x) for x in layers.split(",") if x.strip())
        except ValueError as exc:
            raise InvalidInputError(
                f"--layers must be comma-separated ints; got {layers!r}."
            ) from exc
    settings = ProbeSettings(
        pooling=pooling,
        layers=chosen,
        probe_kinds=probe_kinds or ("logistic", "mass_mean"),
        max_samples=max_samples,
        test_size=test_size,
        seed=seed,
        n_boot=n_boot,
        batch_size=batch_size,
        scorecard=scorecard,
        checks=tuple(c.strip() for c in checks.split(",") if c.strip()) if checks else None,
        thresholds=load_thresholds(thresholds_file, _parse_overrides(threshold_overrides)),
        transfer_files=transfer_files,
    )
    if settings.scorecard:  # an unknown check name fails before any compute
        from probes.robustness.scorecard import check_names

        check_names(settings.checks)
    run_dir = new_run_dir(out, report_label(datasets))  # fail on an unwritable folder early
    with discard_if_empty(run_dir):
        backbone = Backbone.load(backbone_spec, device=device, max_length=max_length)
        run = run_probe_report(
            backbone,
            datasets,
            run_dir,
            settings,
            progress=not quiet,
            on_step=None if quiet else lambda _done, message: click.echo(message, err=True),
        )
    report, paths, results, scorecards = run.report, run.paths, run.results, run.scorecards
    if as_json:
        emit_json(
            {
                "report_dir": str(run_dir),
                "files": {k: str(v) for k, v in paths.items()},
                "backbone": report["backbone"],
                "results": [r.summary() for r in results],
                "scorecards": [
                    {
                        "concept": c.concept,
                        "dataset": c.dataset,
                        "overall": c.overall,
                        "failed": c.failed,
                    }
                    for c in scorecards
                ],
            }
        )
        return
    kinds = settings.probe_kinds
    for r in results:
        best = r.sweep.best("logistic" if "logistic" in kinds else kinds[0])
        truncated = f", {r.n_truncated} truncated" if r.n_truncated else ""
        click.echo(
            f"{r.dataset.name:>16}: best {best.probe} layer {best.layer} AUROC {best.auroc}{truncated}"
        )
    for card in scorecards:
        click.echo(f"{card.dataset:>16}: {card.concept} is {card.summary_line()}")
    click.echo(f"report: {paths['html']}")


def _parse_overrides(pairs: tuple[str, ...]) -> dict[str, float]:
    out: dict[str, float] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise AuditError(
                f"--threshold takes NAME=VALUE with a number, e.g. selectivity=0.2; got {pair!r}."
            )
    return out


@main.command("checks")
@click.option("--json", "as_json", is_flag=True)
def checks_command(as_json: bool) -> None:
    """List the scorecard checks and the default thresholds that judge them."""
    from probes.robustness import THRESHOLDS
    from probes.robustness.scorecard import CHECK_MODULES

    if as_json:
        emit_json(
            {
                "checks": list(CHECK_MODULES),
                "thresholds": {
                    t.name: {"value": t.value, "op": t.op, "description": t.description}
                    for t in THRESHOLDS.values()
                },
            }
        )
        return
    click.echo("checks: presence (always), " + ", ".join(CHECK_MODULES))
    for t in THRESHOLDS.values():
        click.echo(f"{t.name:<24} {t.op} {t.value:<6g} {t.description}")


@main.group()
def store() -> None:
    """Show and free the activation store (under AUDIT_HOME)."""


@store.command("list")
@click.option("--json", "as_json", is_flag=True)
@friendly
def store_list(as_json: bool) -> None:
    """List stored activation shards."""
    from probes import ActivationStore

    act_store = ActivationStore()
    shards = act_store.list()
    if as_json:
        emit_json(
            {
                "root": str(act_store.root),
                "shards": [
                    {
                        **s.key.__dict__,
                        "n_texts": s.n_texts,
                        "n_bytes": s.n_bytes,
                        "created_at": s.created_at,
                        "backbone": s.backbone,
                        "dataset": s.dataset,
                    }
                    for s in shards
                ],
            }
        )
        return
    click.echo(
        f"store: {act_store.root} ({len(shards)} shards, {sum(s.n_bytes for s in shards) / 1e6:.1f} MB)"
    )
    for s in shards:
        click.echo(
            f"{s.key.fingerprint}  {s.dataset or s.key.texts_hash[:12]:<18} {s.key.hook_name:<28} {s.key.pooling:<6} {s.n_texts:>7} texts {s.n_bytes / 1e6:8.2f} MB  {s.created_at[:19]}"
        )


@store.command("prune")
@click.option("--fingerprint", default=None, help="Delete shards of this backbone fingerprint.")
@click.option(
    "--older-than",
    "older_than",
    type=float,
    default=None,
    help="Delete shards older than this many days.",
)
@click.option("--all", "everything", is_flag=True, help="Delete every shard.")
@click.option("--json", "as_json", is_flag=True)
@friendly
def store_prune(
    fingerprint: str | None, older_than: float | None, everything: bool, as_json: bool
) -> None:
    """Delete stored shards by fingerprint, age, or all of them."""
    from probes import ActivationStore

    n, freed = ActivationStore().prune(
        fingerprint=fingerprint, older_than_days=older_than, everything=everything
    )
    if as_json:
        emit_json({"deleted": n, "bytes_freed": freed})
    else:
        click.echo(f"deleted {n} shards, freed {freed / 1e6:.1f} MB")


@main.command()
@click.option(
    "--requests", "show_requests", is_flag=True, help="List the request-screening sources instead."
)
@click.option("--json", "as_json", is_flag=True)
@friendly
def datasets(show_requests: bool, as_json: bool) -> None:
    """List the bundled concept datasets (or request sources) and the packages they come from."""
    from probes import list_datasets

    if show_requests:
        from probes.requests import list_request_sources

        sources = list_request_sources()
        if as_json:
            emit_json([s.__dict__ for s in sources])
            return
        name_w = max(len(s.name) for s in sources)
        package_w = max(len(s.package) for s in sources)
        for s in sources:
            flag = " (templated)" if s.templated else ""
            click.echo(
                f"{s.name:<{name_w}} {s.label:<8} {s.n_rows:>5}  {s.package:<{package_w}} "
                f"{s.description}{flag}"
            )
        return
    infos = list_datasets()
    if as_json:
        emit_json([i.__dict__ for i in infos])
        return
    for i in infos:
        click.echo(f"{i.name:<16} {i.concept:<10} {i.package:<24} {i.description}")


@main.command()
@backbone_options
@click.option("--hooks", "show_hooks", is_flag=True, help="Also list every hook name.")
@click.option("--json", "as_json", is_flag=True)
@friendly
def backbone(
    backbone_spec: str, device: str, max_length: int | None, show_hooks: bool, as_json: bool
) -> None:
    """Boot a backbone and show its name, fingerprint, layers, d_model and hook names."""
    from probes import Backbone

    bb = Backbone.load(backbone_spec, device=device, max_length=max_length)
    info = bb.info()
    if show_hooks:
        info["hook_names"] = list(bb.hook_names)
    if as_json:
        emit_json(info)
        return
    for key, value in info.items():
        if key != "hook_names":
            click.echo(f"{key:>12}: {value}")
    if show_hooks:
        click.echo("\n".join(bb.hook_names))


@main.command()
@click.option("--quick", is_flag=True, help="Small sizes for CI (seconds).")
@backbone_options
@click.option(
    "--out", type=click.Path(path_type=Path), default=Path("reports/bench"), show_default=True
)
@click.option("--only", "only", multiple=True, help="Run only these benchmarks (repeatable).")
@click.option("--json", "as_json", is_flag=True)
@friendly
def bench(
    quick: bool,
    backbone_spec: str,
    device: str,
    max_length: int | None,
    out: Path,
    only: tuple[str, ...],
    as_json: bool,
) -> None:
    """Run the benchmarks: each figure a ratio against a baseline measured in the same run."""
    from audit.bench import run_benchmarks

    result = run_benchmarks(
        quick=quick,
        backbone_spec=backbone_spec,
        device=device,
        max_length=max_length,
        out=out,
        only=list(only) or None,
    )
    if as_json:
        emit_json(result.payload)
        return
    click.echo(result.markdown)
    click.echo(f"written: {result.json_path}")


from audit.serve_cli import serve  # noqa: E402

main.add_command(serve)

from audit.tenant_cli import tenant  # noqa: E402

main.add_command(tenant)

from audit.log_cli import log  # noqa: E402

main.add_command(log)

from audit.screen_cli import screen  # noqa: E402

main.add_command(screen)

from audit.screen_eval_cli import screen_eval  # noqa: E402

main.add_command(screen_eval)

from audit.promote_cli import promote  # noqa: E402

main.add_command(promote)

from audit.scale.serve_ray_cli import serve_ray  # noqa: E402

main.add_command(serve_ray)

from audit.scale.extract_cli import extract  # noqa: E402

main.add_command(extract)


if __name__ == "__main__":  # pragma: no cover
    main()
