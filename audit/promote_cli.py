"""``audit promote PATH``: re-bind probes, screens and heads to a checkpoint whose audit passed."""

from __future__ import annotations

from pathlib import Path

import click

from audit.cli_common import emit_json, friendly


@click.command("promote")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option(
    "--reports",
    "reports_root",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("reports"),
    show_default=True,
    help="Where the checkpoint audit reports are (pytest --audit-report).",
)
@click.option("--dry-run", is_flag=True, help="Say what would be re-bound; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@friendly
def promote(checkpoint: Path, reports_root: Path, dry_run: bool, as_json: bool) -> None:
    """Re-bind probes, screens and heads to CHECKPOINT after a passing audit (logged)."""
    from audit.checkpoint.promote import promote as run_promote

    promotion = run_promote(checkpoint, reports_root=reports_root, dry_run=dry_run)
    if as_json:
        emit_json(promotion.as_dict())
        return
    verb = "would re-bind" if dry_run else "re-bound"
    click.echo(
        f"{promotion.from_fingerprint} -> {promotion.to_fingerprint} ({promotion.report}): "
        f"{verb} {len(promotion.screens)} screen bank(s), {promotion.probes} probe(s), "
        f"{len(promotion.heads)} head(s)."
    )
    for moved in promotion.screens:
        click.echo(f"  screens {moved['from']} -> {moved['to']}")
    for head in promotion.heads:
        click.echo(f"  head {head}")
