"""``audit log ...``: verify, browse and export the tamper-evident audit log of screening decisions.

The log is ``<AUDIT_HOME>/screening/audit_log.sqlite3`` unless ``--db`` says otherwise, or the
PostgreSQL database of ``--database-url`` (env ``AUDIT_DATABASE_URL``) that server replicas share; its MAC
key is ``AUDIT_LOG_KEY`` (hex) or ``<AUDIT_HOME>/screening/log.key`` unless ``--key-file`` says
otherwise. Reading commands never create a log or a key. Every command has ``--help``; ``verify``
and ``show`` take ``--json``. User errors are one line and exit 1; ``verify`` exits 1 when the log
is not intact, printing the first fault.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from audit.cli_common import emit_json as _emit_json
from audit.cli_common import friendly as _friendly
from audit.errors import AuditError

if TYPE_CHECKING:
    from audit.screening.log import SQLAuditLog


log: click.Group = click.Group(
    "log",
    help="Verify, show and export the tamper-evident log of screening decisions.",
)


def _db_option(fn: Any) -> Any:
    return click.option(
        "--db",
        "db",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="The log file (default: <AUDIT_HOME>/screening/audit_log.sqlite3).",
    )(fn)


def _url_option(fn: Any) -> Any:
    return click.option(
        "--database-url",
        "database_url",
        envvar="AUDIT_DATABASE_URL",
        default=None,
        help="Read the log from this PostgreSQL database (postgresql://...; env "
        "AUDIT_DATABASE_URL) instead of the SQLite file.",
    )(fn)


def _key_option(fn: Any) -> Any:
    return click.option(
        "--key-file",
        "key_file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="The log's hex key file (default: AUDIT_LOG_KEY, else "
        "<AUDIT_HOME>/screening/log.key).",
    )(fn)


def _json_option(fn: Any) -> Any:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")(fn)


# The values of audit.screening.log.DECISIONS and RECORD_KINDS, spelled out so that loading the
# CLI does not import the screening package (and torch); a test checks they agree.
DECISION_CHOICES = ("allow", "flag", "block")
KIND_CHOICES = ("request", "generation", "corpus")


def _filter_options(fn: Any) -> Any:
    options = [
        click.option("--tenant", "tenant_id", default=None, help="Only this tenant's decisions."),
        click.option(
            "--decision",
            type=click.Choice(DECISION_CHOICES),
            default=None,
            help="Only this action.",
        ),
        click.option("--screen", default=None, help="Only this screen's decisions."),
        click.option(
            "--kind", type=click.Choice(KIND_CHOICES), default=None, help="Only this kind."
        ),
        click.option("--since", default=None, help="From this ISO-8601 time (inclusive, UTC)."),
        click.option("--until", default=None, help="Before this ISO-8601 time (exclusive, UTC)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _open(
    db: Path | None, key_file: Path | None, *, need_key: bool, database_url: str | None = None
) -> SQLAuditLog:
    """Open an existing log (never create one); load its key, never create one, if needed."""
    from audit.screening.log import SQLiteAuditLog, default_log_path, load_key

    if database_url is not None:
        from audit.db import is_database_url, redact_url
        from audit.screening.log_pg import PostgresAuditLog

        if db is not None:
            raise AuditError("Give either --db (a SQLite log) or --database-url, not both.")
        if not is_database_url(database_url):
            raise AuditError(
                f"--database-url must be a postgresql:// URL. Got {redact_url(database_url)!r}."
            )
        return PostgresAuditLog(
            database_url, key=load_key(key_file) if need_key else None, key_path=key_file
        )

    path = db.expanduser() if db is not None else default_log_path()
    if not path.is_file():
        raise AuditError(
            f"No audit log at {str(path)!r}: screening has logged nothing there yet. Point --db "
            "at the log file, or AUDIT_HOME at the folder whose screening/ holds it."
        )
    key = load_key(key_file) if need_key else None
    return SQLiteAuditLog(path, key=key, key_path=key_file)


def _read_heads(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise AuditError(
            f"No heads file {str(path)!r}: give the file `audit log export-head --out` appends to."
        )
    heads: list[dict[str, Any]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            head = json.loads(line)
        except ValueError as exc:
            raise AuditError(
                f"Line {number} of the heads file {str(path)!r} is not JSON ({exc}); each line "
                "must be one object as `audit log export-head` writes."
            ) from exc
        if not isinstance(head, dict):
            raise AuditError(f"Line {number} of the heads file {str(path)!r} is not a JSON object.")
        heads.append(head)
    return heads


@log.command("verify")
@_db_option
@_url_option
@_key_option
@click.option(
    "--heads",
    "heads_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A JSONL file of exported heads to check too (detects a truncated tail).",
)
@_json_option
@_friendly
def verify(
    db: Path | None,
    database_url: str | None,
    key_file: Path | None,
    heads_file: Path | None,
    as_json: bool,
) -> None:
    """Check every entry's hash link and MAC (and the exported heads); exit 1 unless intact."""
    heads = _read_heads(heads_file) if heads_file is not None else []
    audit_log = _open(db, key_file, need_key=True, database_url=database_url)
    try:
        result = audit_log.verify(heads=heads)
    finally:
        audit_log.close()
    if as_json:
        _emit_json({**result.to_dict(), "db": audit_log.location, "n_heads": len(heads)})
    elif result.ok:
        head = result.head
        where = f"; head seq {head['seq']} {head['entry_hash']}" if head else ""
        checked = f", {len(heads)} exported heads matched" if heads else ""
        click.echo(f"ok: {result.n_records} records intact{checked}{where}")
    else:
        click.echo(f"NOT INTACT at seq {result.first_bad_seq}: {result.problem}")
        click.echo(f"({result.n_records} records before it verified intact)")
    if not result.ok:
        click.get_current_context().exit(1)


@log.command("show")
@_db_option
@_url_option
@_filter_options
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=0))
@_json_option
@_friendly
def show(
    db: Path | None,
    database_url: str | None,
    tenant_id: str | None,
    decision: str | None,
    screen: str | None,
    kind: str | None,
    since: str | None,
    until: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Show the latest decisions, newest first (filters read the log; `verify` checks it)."""
    filters: dict[str, Any] = {
        "tenant_id": tenant_id,
        "decision": decision,
        "screen": screen,
        "kind": kind,
        "since": since,
        "until": until,
    }
    audit_log = _open(db, None, need_key=False, database_url=database_url)
    try:
        entries = audit_log.query(limit=limit, **filters)
        total = audit_log.count(**filters)
    finally:
        audit_log.close()
    if as_json:
        _emit_json({"total": total, "entries": [e.to_dict() for e in entries]})
        return
    if not entries:
        click.echo("no matching decisions")
        return
    for entry in entries:
        r = entry.record
        click.echo(
            f"{entry.seq:>7}  {r.time[:19]}  {r.decision:<5}  {r.score:.3f}  {r.screen:<16} "
            f"{r.tenant_id or '-':<20} {r.decision_id}"
        )
    if total > len(entries):
        click.echo(f"({len(entries)} of {total} shown; raise --limit for more)")


@log.command("export")
@_db_option
@_url_option
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Write the matching decisions to this CSV file (newest first).",
)
@_filter_options
@_friendly
def export(
    db: Path | None,
    database_url: str | None,
    csv_path: Path,
    tenant_id: str | None,
    decision: str | None,
    screen: str | None,
    kind: str | None,
    since: str | None,
    until: str | None,
) -> None:
    """Export the matching decisions as CSV, one row per record."""
    from audit.screening.log import export_csv

    audit_log = _open(db, None, need_key=False, database_url=database_url)
    try:
        n = export_csv(
            audit_log,
            csv_path,
            tenant_id=tenant_id,
            decision=decision,
            screen=screen,
            kind=kind,
            since=since,
            until=until,
        )
    finally:
        audit_log.close()
    click.echo(f"wrote {n} records to {csv_path}")


@log.command("export-head")
@_db_option
@_url_option
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Append the head as one JSON line to this file (keep it away from the log). "
    "Default: print the line on stdout.",
)
@_friendly
def export_head(db: Path | None, database_url: str | None, out: Path | None) -> None:
    """Export the chain head (seq, entry_hash, mac, time) to check the log against later."""
    from datetime import UTC, datetime

    audit_log = _open(db, None, need_key=False, database_url=database_url)
    try:
        head = audit_log.export_head()
    finally:
        audit_log.close()
    if head is None:
        raise AuditError(f"The audit log {audit_log.location!r} is empty: no head to export.")
    line = json.dumps({**head, "exported_at": datetime.now(UTC).isoformat()}, sort_keys=True)
    if out is None:
        click.echo(line)
        return
    out = out.expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    click.echo(f"appended head seq {head['seq']} to {out}")
