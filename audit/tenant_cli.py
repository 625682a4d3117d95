"""``audit tenant ...``: the tenant HTTP API for local use, on the registry and store under AUDIT_HOME.

No server is needed: each command opens the registry (``<AUDIT_HOME>/registry.sqlite3``) and,
where it runs a head, boots the backbone in-process. AUDIT_HOME is read when a command runs, not
at import. Every command has ``--help`` and ``--json``; user errors are one line and exit 1.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from audit.cli_common import emit_json as _emit_json
from audit.cli_common import friendly as _friendly
from audit.errors import AuditError

if TYPE_CHECKING:
    from audit.tenants.registry import HeadRecord, Registry
    from audit.tenants.service import TenantService
    from probes.backbone import Backbone


tenant: click.Group = click.Group(
    "tenant",
    help="Create tenants, train, run and audit their heads on this machine (state in AUDIT_HOME).",
)


_KIND_HELP = "linear, mlp or blocks (a trainable copy of the backbone's last k blocks)."
_TASK_HELP = "classification, regression, or lm (blocks heads on a decoder backbone)."


def _json_option(fn: Any) -> Any:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")(fn)


def _registry() -> Registry:
    """Return the registry under audit_home() (read now), or in the PostgreSQL database that
    AUDIT_DATABASE_URL names (the one `audit serve --database-url` replicas share)."""
    import os

    from audit.db import DATABASE_URL_ENV
    from audit.tenants.registry import open_registry

    return open_registry(os.environ.get(DATABASE_URL_ENV) or None)


@functools.lru_cache(maxsize=2)
def _backbone(spec: str, device: str) -> Backbone:
    """Return the backbone (booted once per process: a test session runs many commands)."""
    from probes import Backbone

    return Backbone.load(spec, device=device)


@contextmanager
def _service(spec: str, device: str, *, progress: bool) -> Iterator[TenantService]:
    from audit.tenants.service import TenantService
    from probes import ActivationStore

    registry = _registry()
    try:
        service = TenantService(
            registry, _backbone(spec, device), ActivationStore(), progress=progress
        )
        try:
            yield service
        finally:
            service.close()
    finally:
        registry.close()


def _require_tenant(registry: Registry, tenant_id: str) -> None:
    from audit.tenants.registry import NotFoundError

    if registry.get_tenant(tenant_id) is None:
        raise NotFoundError(
            f"No tenant {tenant_id!r} in the registry under AUDIT_HOME; list tenants with "
            "`audit tenant list`."
        )


def _ready_head(registry: Registry, tenant_id: str, head_id: str) -> HeadRecord:
    from audit.tenants.registry import NotFoundError

    _require_tenant(registry, tenant_id)
    record = registry.get_head(tenant_id, head_id)
    if record is None:
        raise NotFoundError(
            f"Tenant {tenant_id} has no head {head_id!r}; list its heads with "
            f"`audit tenant list {tenant_id}`."
        )
    if record.status != "ready":
        reason = record.meta.get("error")
        raise AuditError(
            f"Head {head_id} is {record.status}, not ready"
            + (f" ({reason})." if reason else ".")
            + " Train it again with `audit tenant train`."
        )
    return record


@contextmanager
def _quiet_job_log() -> Iterator[None]:
    service_log = logging.getLogger("audit.tenants.service")
    level = service_log.level
    service_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        service_log.setLevel(level)


def _read_file(path: Path) -> bytes:
    if not path.is_file():
        raise AuditError(
            f"No file {str(path)!r}: give a JSONL file with one "
            '{"text": ..., "label": ...} object per line.'
        )
    return path.read_bytes()


def _head_backbone(record: HeadRecord, backbone_spec: str | None) -> str:
    """Return the backbone to run a head on: the one it was trained on unless told otherwise."""
    return backbone_spec or str(record.meta.get("backbone_name") or "minilm")


_backbone_option = click.option(
    "--backbone",
    "backbone_spec",
    default=None,
    help="Backbone alias, folder or HF name (default: minilm to train; the head's own to run).",
)
_device_option = click.option(
    "--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto."
)


# ------------------------------------------------------------------------------ tenants
@tenant.command("create")
@click.argument("name")
@_json_option
@_friendly
def create(name: str, as_json: bool) -> None:
    """Create a tenant; print its tenant_id and its API key (shown this once only)."""
    registry = _registry()
    try:
        new = registry.create_tenant(name)
    finally:
        registry.close()
    if as_json:
        _emit_json({**new.tenant.__dict__, "api_key": new.api_key})
        return
    click.echo(f"tenant_id: {new.tenant.tenant_id}")
    click.echo(f"api_key:   {new.api_key}")
    click.echo("The key is shown once and stored only as a hash: keep it now.", err=True)


@tenant.command("list")
@click.argument("tenant_id", required=False)
@_json_option
@_friendly
def list_command(tenant_id: str | None, as_json: bool) -> None:
    """List the tenants, or with TENANT_ID that tenant's heads."""
    registry = _registry()
    try:
        if tenant_id is None:
            rows = [
                {**t.__dict__, "n_heads": registry.count_heads(t.tenant_id)}
                for t in registry.list_tenants()
            ]
        else:
            _require_tenant(registry, tenant_id)
            rows = [_head_row(h) for h in registry.list_heads(tenant_id)]
    finally:
        registry.close()
    if as_json:
        key = "tenants" if tenant_id is None else "heads"
        _emit_json({"tenant_id": tenant_id, key: rows} if tenant_id else {key: rows})
        return
    if not rows:
        click.echo(
            "no tenants yet: `audit tenant create NAME`" if tenant_id is None else "no heads"
        )
    for row in rows:
        if tenant_id is None:
            click.echo(
                f"{row['tenant_id']}  {row['name']:<24} {row['n_heads']:>3} heads  "
                f"{row['created_at'][:19]}"
            )
        else:
            accuracy = row["metrics"].get("val_accuracy")
            shown = f"val_accuracy {accuracy:.3f}" if isinstance(accuracy, float) else ""
            if row["error"]:
                shown = f"error: {row['error']}"
            click.echo(
                f"{row['head_id']}  {row['kind']:<6} {row['status']:<8} {row['input_hook'] or '':<26}"
                f" {shown}"
            )


def _head_row(record: HeadRecord) -> dict[str, Any]:
    metrics = {k: v for k, v in record.meta.get("metrics", {}).items() if k != "history"}
    return {
        "head_id": record.head_id,
        "kind": record.kind,
        "status": record.status,
        "corpus_id": record.corpus_id,
        "task": record.meta.get("task"),
        "input_hook": record.meta.get("input_hook"),
        "label_names": record.meta.get("label_names", []),
        "metrics": metrics,
        "error": record.meta.get("error"),
        "created_at": record.created_at,
    }


@tenant.command("delete")
@click.argument("tenant_id")
@click.option("--head", "head_id", default=None, help="Delete only this head of the tenant.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@_json_option
@_friendly
def delete(tenant_id: str, head_id: str | None, yes: bool, as_json: bool) -> None:
    """Delete a tenant with its keys, corpora, heads and files (or one head with --head)."""
    from audit.tenants.registry import NotFoundError

    registry = _registry()
    try:
        _require_tenant(registry, tenant_id)
        what = f"head {head_id} of tenant {tenant_id}" if head_id else f"tenant {tenant_id}"
        if not yes:
            click.confirm(f"Delete {what} and its files?", abort=True, err=True)
        if head_id is None:
            registry.delete_tenant(tenant_id)
        elif not registry.delete_head(tenant_id, head_id):
            raise NotFoundError(f"Tenant {tenant_id} has no head {head_id!r}.")
    finally:
        registry.close()
    if as_json:
        _emit_json({"tenant_id": tenant_id, "head_id": head_id, "deleted": True})
        return
    click.echo(f"deleted {what}")


@tenant.command("rotate-key")
@click.argument("tenant_id")
@_json_option
@_friendly
def rotate_key(tenant_id: str, as_json: bool) -> None:
    """Revoke every API key of a tenant and print a new one (shown this once only)."""
    registry = _registry()
    try:
        _require_tenant(registry, tenant_id)
        key = registry.rotate_key(tenant_id)
    finally:
        registry.close()
    if as_json:
        _emit_json({"tenant_id": tenant_id, "api_key": key})
        return
    click.echo(f"api_key: {key}")
    click.echo("Every earlier key of this tenant is revoked; keep this one now.", err=True)


# -------------------------------------------------------------------------------- heads
@tenant.command("train")
@click.argument("tenant_id")
@click.option(
    "--data",
    "data_file",
    required=True,
    type=click.Path(path_type=Path),
    help='JSONL corpus: one {"text": ..., "label": ...} per line.',
)
@click.option("--kind", default="linear", show_default=True, help=_KIND_HELP)
@click.option("--layer", type=int, default=None, help="linear/mlp: block read (default: last).")
@click.option("--k", "k", type=int, default=None, help="blocks: blocks copied (default: 2).")
@click.option("--task", default="classification", show_default=True, help=_TASK_HELP)
@click.option("--epochs", type=int, default=None, help="Most epochs (early stopping; default 30).")
@click.option("--seed", type=int, default=0, show_default=True)
@_backbone_option
@_device_option
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_json_option
@_friendly
def train(
    tenant_id: str,
    data_file: Path,
    kind: str,
    layer: int | None,
    k: int | None,
    task: str,
    epochs: int | None,
    seed: int,
    backbone_spec: str | None,
    device: str,
    quiet: bool,
    as_json: bool,
) -> None:
    """Add a corpus to a tenant and train a head on it now; print the head_id and its metrics."""
    from audit.tenants.service import parse_corpus, spec_from_dict

    data = _read_file(data_file)
    parsed = parse_corpus(data, labelled=task != "lm")  # a bad corpus fails before booting
    registry = _registry()
    try:
        _require_tenant(registry, tenant_id)  # before booting anything
    finally:
        registry.close()
    fields: dict[str, Any] = {"kind": kind, "task": task, "seed": seed}
    fields |= {n: v for n, v in (("layer", layer), ("k", k), ("epochs", epochs)) if v is not None}
    spec = spec_from_dict(fields)
    with _service(backbone_spec or "minilm", device, progress=not quiet) as service:
        spec.resolved(service.backbone)  # a bad spec fails before the corpus is stored
        corpus = service.store_corpus(tenant_id, parsed)
        if not quiet:
            click.echo(f"training a {spec.kind} head on {corpus.n_lines} rows", err=True)
        with _quiet_job_log():  # a failed job's reason is this command's error line
            record = service.train(tenant_id, corpus.corpus_id, spec)
    row = {"tenant_id": tenant_id, "corpus_id": corpus.corpus_id, **_head_row(record)}
    if as_json:
        _emit_json(row)
        return
    metrics = row["metrics"]
    shown = ", ".join(
        f"{name} {metrics[name]:.3f}"
        for name in ("val_accuracy", "val_auroc", "val_rmse", "val_loss")
        if isinstance(metrics.get(name), float)
    )
    click.echo(f"head_id: {record.head_id}")
    click.echo(
        f"{record.kind} head on {row['input_hook']}, corpus {corpus.corpus_id} "
        f"({corpus.n_lines} rows): {shown}; best epoch {metrics.get('best_epoch')} of "
        f"{metrics.get('epochs_run')}"
    )


@tenant.command("predict")
@click.argument("tenant_id")
@click.argument("head_id")
@click.argument("texts", nargs=-1)
@click.option(
    "--data",
    "data_file",
    type=click.Path(path_type=Path),
    default=None,
    help='JSONL of {"text": ...} lines to predict (instead of TEXT arguments).',
)
@_backbone_option
@_device_option
@_json_option
@_friendly
def predict(
    tenant_id: str,
    head_id: str,
    texts: tuple[str, ...],
    data_file: Path | None,
    backbone_spec: str | None,
    device: str,
    as_json: bool,
) -> None:
    """Run a tenant's head on TEXT arguments (or --data FILE.jsonl); print label and scores."""
    from audit.tenants.service import parse_corpus

    if bool(texts) == (data_file is not None):
        raise AuditError("Give the texts either as TEXT arguments or as --data FILE.jsonl.")
    if data_file is not None:
        items = parse_corpus(_read_file(data_file), labelled=False).texts
    else:
        items = list(texts)
    registry = _registry()
    try:
        record = _ready_head(registry, tenant_id, head_id)
    finally:
        registry.close()
    with _service(_head_backbone(record, backbone_spec), device, progress=False) as service:
        outputs = service.predict(tenant_id, head_id, items)
    rows = [{"text": t, **o.as_dict()} for t, o in zip(items, outputs, strict=True)]
    if as_json:
        _emit_json({"tenant_id": tenant_id, "head_id": head_id, "predictions": rows})
        return
    for row in rows:
        text = row["text"] if len(row["text"]) <= 60 else row["text"][:57] + "..."
        if row["label"] is None:
            click.echo(f"{row['value']:>10.4f}  {text}")
        else:
            click.echo(f"{row['label']:<12} {row['scores'][row['label']]:.3f}  {text}")


@tenant.command("audit")
@click.argument("tenant_id")
@click.argument("head_id")
@click.option(
    "--concepts",
    default="sentiment,truth,toxicity",
    show_default=True,
    help="Comma-separated bundled concepts to measure.",
)
@click.option(
    "--method",
    default="leace",
    show_default=True,
    help="leace (LEACE eraser) or mean_difference (project out the class-mean difference).",
)
@click.option(
    "--max-texts",
    type=int,
    default=300,
    show_default=True,
    help="Audit on at most this many of the head's texts (seeded subsample).",
)
@click.option(
    "--max-samples",
    type=int,
    default=300,
    show_default=True,
    help="Rows per bundled concept dataset used to fit the concept directions.",
)
@click.option(
    "--data",
    "data_file",
    type=click.Path(path_type=Path),
    default=None,
    help="JSONL of texts to audit on (default: the corpus the head was trained on).",
)
@click.option(
    "--controls",
    "n_controls",
    type=int,
    default=3,
    show_default=True,
    help="Random directions erased as the baseline (their mean is reported).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@_backbone_option
@_device_option
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_json_option
@_friendly
def audit_command(
    tenant_id: str,
    head_id: str,
    concepts: str,
    method: str,
    max_texts: int,
    max_samples: int,
    data_file: Path | None,
    n_controls: int,
    seed: int,
    backbone_spec: str | None,
    device: str,
    quiet: bool,
    as_json: bool,
) -> None:
    """Measure which backbone concepts a head relies on (erasure, next to a random control)."""
    from audit.tenants.reliance import SCORE_DEFINITION, audit_head
    from audit.tenants.service import parse_corpus

    data = _read_file(data_file) if data_file is not None else None
    registry = _registry()
    try:
        record = _ready_head(registry, tenant_id, head_id)
    finally:
        registry.close()
    wanted = [c.strip() for c in concepts.split(",") if c.strip()]
    with _service(_head_backbone(record, backbone_spec), device, progress=not quiet) as service:
        if data is not None:
            texts = parse_corpus(data, labelled=False).texts
        else:
            texts = service.read_corpus(tenant_id, record.corpus_id).texts
        report = audit_head(
            service.backbone,
            service.store,
            service.head(tenant_id, head_id),
            texts,
            concepts=wanted,
            method=method,
            max_texts=max_texts,
            max_samples=max_samples,
            n_controls=n_controls,
            seed=seed,
            progress=not quiet,
        )
    if as_json:
        _emit_json(report.as_dict())
        return
    click.echo(f"head {head_id} ({report.kind}, {report.input_hook}), {report.n_texts} texts")
    click.echo(report.summary_line())
    click.echo(f"{'':<16}{'score':>7}{'mean |dp|':>11}{'flipped':>9}{'|cos|':>7}{'AUROC':>7}")
    for row in (*report.concepts, report.control):
        cos = "-" if row.weight_cosine is None else f"{row.weight_cosine:.2f}"
        flipped = "-" if row.fraction_flipped is None else f"{row.fraction_flipped:.2f}"
        auc = "-" if row.probe_auroc is None else f"{row.probe_auroc:.2f}"
        click.echo(
            f"{row.name:<16}{row.score:>7.2f}{row.mean_abs_change:>11.3f}{flipped:>9}"
            f"{cos:>7}{auc:>7}"
        )
    click.echo(f"score: {SCORE_DEFINITION}.")
