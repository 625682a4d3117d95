"""``audit serve-ray``: N replicas of the tenant HTTP API behind Ray Serve, until interrupted."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Any

import click

from audit.serve_cli import api_settings, serving_options, warn_without_admin_key


@click.command("serve-ray")
@click.option(
    "--replicas",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="How many replicas of the API to run.",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address Ray Serve's HTTP proxy listens on (0.0.0.0 for other machines).",
)
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option(
    "--address",
    default=None,
    help="Join the Ray cluster at this address (HOST:6379, or 'auto'); default: RAY_ADDRESS, "
    "else a local Ray started here.",
)
@click.option(
    "--database-url",
    default=None,
    envvar="AUDIT_DATABASE_URL",
    help="postgresql:// URL holding the registry and the audit log (needed when replicas run "
    "on several machines; default: SQLite files under AUDIT_HOME). Env: AUDIT_DATABASE_URL.",
)
@click.option(
    "--num-cpus",
    "num_cpus_per_replica",
    type=click.FloatRange(min=0.0),
    default=1.0,
    show_default=True,
    help="CPUs each replica reserves on the cluster (a fraction packs several on one core).",
)
@click.option(
    "--max-ongoing-requests",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Requests one replica takes at once (its inference engine batches them).",
)
@serving_options
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the address, replica count and options as one JSON line once all replicas answer.",
)
def serve_ray(
    replicas: int,
    host: str,
    port: int,
    address: str | None,
    database_url: str | None,
    num_cpus_per_replica: float,
    max_ongoing_requests: int,
    backbone_spec: str,
    device: str,
    max_length: int | None,
    screening: bool,
    screens_version: str | None,
    retain_text: bool,
    as_json: bool,
    **limits: Any,
) -> None:
    """Serve the tenant HTTP API from several replicas behind Ray Serve's HTTP proxy.

    Every replica loads the backbone and serves the same AUDIT_HOME, which must be a folder all
    replicas' machines mount. Owner routes need AUDIT_ADMIN_KEY (passed on to the replicas).
    Replicas on several machines need --database-url: SQLite files are for one machine. Each
    answer names its replica in the x-audit-replica header. Runs until interrupted (Ctrl-C).
    """
    from audit.errors import AuditError
    from audit.scale.serve_ray import describe, run_replicas
    from probes.errors import ProbesError
    from probes.home import audit_home

    settings = api_settings(limits)
    warn_without_admin_key()
    home: Path = audit_home()
    try:
        served = run_replicas(
            home,
            replicas=replicas,
            host=host,
            port=port,
            settings=settings,
            screening=screening,
            screens_version=screens_version,
            retain_text=retain_text,
            backbone_spec=backbone_spec,
            device=device,
            max_length=max_length,
            database_url=database_url,
            address=address,
            num_cpus_per_replica=num_cpus_per_replica,
            max_ongoing_requests=max_ongoing_requests,
        )
    except (AuditError, ProbesError) as exc:
        raise click.ClickException(str(exc)) from exc
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        if as_json:
            click.echo(json.dumps(describe(served)))
        else:
            click.echo(
                f"{replicas} replica(s) of the tenant API at {served.url} (docs: {served.url}/docs); "
                "Ctrl-C stops them.",
                err=True,
            )
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        served.shutdown()
