"""``audit serve``: the HTTP API under uvicorn, with limits taken from ApiSettings' fields."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import click

from audit.api.settings import ApiSettings
from audit.cli_common import backbone_options

_SCALARS: dict[Any, type] = {int: int, float: float}


def settings_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add one option per ApiSettings field (``--max-text-chars``...), defaults and help included."""
    for name, field in reversed(ApiSettings.model_fields.items()):
        fn = click.option(
            f"--{name.replace('_', '-')}",
            name,
            type=_SCALARS[field.annotation],
            default=field.default,
            show_default=True,
            help=field.description,
        )(fn)
    return fn


def serving_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add the options every way of serving the API shares: the backbone, the ApiSettings
    limits, screening on/off, the screen bank version and text retention."""
    decorators: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
        backbone_options,
        settings_options,
        click.option(
            "--screening/--no-screening",
            default=True,
            show_default=True,
            help="Screen every request with the backbone's screen bank and log each decision.",
        ),
        click.option(
            "--screens",
            "screens_version",
            default=None,
            help="Serve this screen bank version (default: the latest, fitted on first start "
            "if there is none; `audit screen list`).",
        ),
        click.option(
            "--retain-text",
            is_flag=True,
            help="Keep request texts in the audit log (default: only their sha256).",
        ),
    ]
    for decorate in reversed(decorators):
        fn = decorate(fn)
    return fn


def api_settings(limits: dict[str, Any]) -> ApiSettings:
    """Return the API settings from the serving options' limits; a bad one is a usage error
    naming its option."""
    from pydantic import ValidationError

    try:
        return ApiSettings(**limits)
    except ValidationError as exc:
        problems = "; ".join(
            f"--{'-'.join(str(p) for p in e['loc']).replace('_', '-')}: {e['msg']}"
            for e in exc.errors()
        )
        raise click.UsageError(problems) from exc


def warn_without_admin_key() -> None:
    """Warn on stderr when the owner key is unset (the owner routes then answer 503)."""
    from audit.api.app import ADMIN_KEY_ENV

    if not os.environ.get(ADMIN_KEY_ENV):
        click.echo(
            f"warning: {ADMIN_KEY_ENV} is not set, so the owner routes (creating tenants) "
            "answer 503; set it to a long random secret.",
            err=True,
        )


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@serving_options
@click.option(
    "--database-url",
    envvar="AUDIT_DATABASE_URL",
    default=None,
    help="Keep the tenant registry and the audit log in this PostgreSQL database "
    "(postgresql://user:password@host:5432/dbname; env AUDIT_DATABASE_URL), shared by every "
    "replica started with it. Default: SQLite files under AUDIT_HOME.",
)
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    default="info",
    show_default=True,
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the address, backbone and limits as one JSON line on stdout before serving.",
)
def serve(
    host: str,
    port: int,
    backbone_spec: str,
    device: str,
    max_length: int | None,
    log_level: str,
    as_json: bool,
    screening: bool,
    screens_version: str | None,
    retain_text: bool,
    database_url: str | None,
    **limits: Any,
) -> None:
    """Serve the tenant HTTP API: keys, corpora, head training, batched, screened predictions.

    State lives under AUDIT_HOME. Owner routes need the environment variable AUDIT_ADMIN_KEY
    (without it they answer 503). Requests are screened with the latest fitted screen bank of
    the backbone (the default screens are fitted on first start) and every decision is written
    to the audit log (`audit log verify`). Routes are documented at http://HOST:PORT/docs.

    With --database-url the registry and the audit log live in PostgreSQL, so several replicas
    (processes or machines, one shared AUDIT_HOME folder) serve the same tenants and append to
    one hash chain.
    """
    import uvicorn

    from audit.api import create_app
    from audit.db import is_database_url, redact_url
    from audit.errors import AuditError
    from audit.storage_faults import check_writable
    from probes.backbone import Backbone
    from probes.errors import ProbesError
    from probes.home import audit_home

    settings = api_settings(limits)
    try:  # a read-only or full store stops the server here, not at its first decision
        check_writable(audit_home())
    except AuditError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        backbone = Backbone.load(backbone_spec, device=device, max_length=max_length)
    except (ProbesError, AuditError) as exc:
        raise click.ClickException(str(exc)) from exc
    if database_url is not None and not is_database_url(database_url):
        raise click.UsageError(
            f"--database-url must be a postgresql:// URL. Got {redact_url(database_url)!r}; "
            "leave it out to keep the registry and the log in SQLite under AUDIT_HOME."
        )
    warn_without_admin_key()
    bank = None
    if screening:
        from audit.screening.catalog import latest_bank, load_or_fit_bank

        try:
            if screens_version is not None:
                bank = latest_bank(backbone, screens_version)
            else:
                bank, fitted = load_or_fit_bank(backbone)
                if fitted:
                    click.echo(f"fitted the default screens: bank {bank.version}", err=True)
        except (ProbesError, AuditError) as exc:
            raise click.ClickException(str(exc)) from exc
    app = create_app(
        backbone=backbone,
        settings=settings,
        screening=screening,
        bank=bank,
        retain_text=retain_text,
        database_url=database_url,
    )
    if as_json:
        info = {
            "url": f"http://{host}:{port}",
            "backbone": {"name": backbone.name, "fingerprint": backbone.fingerprint},
            "settings": settings.model_dump(),
            "database": None if database_url is None else redact_url(database_url),
            "screening": None
            if bank is None
            else {"version": bank.version, "primary": bank.primary},
        }
        click.echo(json.dumps(info))
    uvicorn.run(app, host=host, port=port, log_level=log_level, workers=1)
