"""``audit extract``: fill the activation store for datasets, in process or as a Ray Data job.

The shards are those ``audit probe`` reads (same texts for the same ``--max-samples`` and
``--seed``, same keys), so a later probe run on the same store computes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from audit.cli_common import backbone_options, emit_json, friendly

if TYPE_CHECKING:
    from audit.scale.ray_extract import StoredExtraction

DEFAULT_MAX_SAMPLES = 2000  # `audit probe`'s default: the same subsample, the same shards
POOLING_CHOICES = ("mean", "first", "last", "max", "tokens")  # probes.pooling, without torch


@click.command("extract")
@click.option(
    "--dataset",
    "dataset_names",
    multiple=True,
    help="A bundled dataset by name (see `audit datasets`). Repeatable.",
)
@click.option(
    "--data",
    "data_files",
    multiple=True,
    type=click.Path(path_type=Path),
    help='Your own JSONL of {"text", "label"} lines, used whole. Repeatable.',
)
@click.option(
    "--max-samples",
    type=click.IntRange(min=0),
    default=DEFAULT_MAX_SAMPLES,
    show_default=True,
    help="Stratified subsample per bundled dataset (as `audit probe`); 0 = all rows.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Subsample seed.")
@backbone_options
@click.option(
    "--hook",
    "hook_names",
    multiple=True,
    help="Hook name, e.g. blocks.3.hook_resid_post. Repeatable (default: every block's output).",
)
@click.option(
    "--pooling",
    "poolings",
    multiple=True,
    type=click.Choice(POOLING_CHOICES),
    help="Pooling (repeatable; default: mean). 'tokens' keeps every token.",
)
@click.option("--ray", "use_ray", is_flag=True, help="Run as a Ray Data job (default: in process).")
@click.option(
    "--address",
    default=None,
    help="Ray cluster to join (ip:6379 or ray://ip:10001; default: RAY_ADDRESS, else a local Ray).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Ray actors, each with one backbone copy.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option(
    "--block-rows",
    type=click.IntRange(min=1),
    default=None,
    help="Texts a Ray worker extracts per call (default: 1024).",
)
@click.option(
    "--store",
    "store_root",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Activation store root (default: AUDIT_HOME/store, the one `audit probe` reads).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@friendly
def extract(
    dataset_names: tuple[str, ...],
    data_files: tuple[Path, ...],
    max_samples: int,
    seed: int,
    backbone_spec: str,
    max_length: int | None,
    device: str,
    hook_names: tuple[str, ...],
    poolings: tuple[str, ...],
    use_ray: bool,
    address: str | None,
    workers: int,
    batch_size: int,
    block_rows: int | None,
    store_root: Path | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Extract activations of datasets into the activation store and print where they went."""
    from audit.errors import AuditError
    from audit.probe_run import select_datasets
    from audit.scale.ray_extract import extract_locally, extract_with_ray
    from probes import ActivationStore, Backbone

    if not (dataset_names or data_files):
        raise AuditError("Nothing to extract: give --dataset NAME or --data FILE.jsonl.")
    if (address or workers != 2) and not use_ray:
        raise AuditError("--address and --workers apply to Ray jobs: add --ray.")
    datasets = select_datasets(
        (), dataset_names, data_files, max_samples=max_samples or None, seed=seed
    )
    store = ActivationStore(store_root)
    # The Ray driver only fingerprints and tokenises: its copy stays on the CPU.
    backbone = Backbone.load(
        backbone_spec, device="cpu" if use_ray else device, max_length=max_length
    )
    ray_options: dict[str, Any] = {}
    if block_rows is not None:
        ray_options["block_rows"] = max(block_rows, batch_size)
    runs: list[tuple[str, StoredExtraction]] = []
    for dataset in datasets:
        if not quiet and not as_json:
            click.echo(f"{dataset.name}: extracting {len(dataset.texts)} texts", err=True)
        if use_ray:
            run = extract_with_ray(
                backbone,
                dataset.texts,
                hook_names or None,
                poolings or ("mean",),
                store=store,
                num_workers=workers,
                batch_size=batch_size,
                device=device,
                address=address,
                dataset_name=dataset.name,
                progress=not quiet,
                **ray_options,
            )
        else:
            run = extract_locally(
                backbone,
                dataset.texts,
                hook_names or None,
                poolings or ("mean",),
                store=store,
                batch_size=batch_size,
                dataset_name=dataset.name,
                progress=not quiet,
            )
        runs.append((dataset.name, run))
    if as_json:
        emit_json(
            {
                "store": str(store.root),
                "backbone": backbone.name,
                "fingerprint": backbone.fingerprint,
                "datasets": [{"dataset": name, **run.as_dict()} for name, run in runs],
            }
        )
        return
    for name, run in runs:
        where = f"on Ray ({run.num_workers} workers)" if run.ray_address else "in process"
        if not run.computed:
            where = "nothing to compute"
        click.echo(
            f"{name}: {run.n_texts} texts, {len(run.computed)} shard(s) written {where}, "
            f"{len(run.reused)} already stored, {run.seconds:.1f} s"
        )
        for key, path in run.shards.items():
            click.echo(f"  {key.hook_name} {key.pooling}: {path}")
    click.echo(f"store: {store.root}")
