"""The tamper-evident audit log on PostgreSQL: one hash chain that many writers share.

:class:`PostgresAuditLog` stores exactly what :class:`~audit.screening.log.SQLiteAuditLog`
stores (the same ``entries`` rows: canonical JSON body, ``prev_hash``, ``entry_hash``, HMAC) in
the PostgreSQL schema ``audit_log`` of the database the URL names, and verifies it with the same
code. It is the log to use when several server replicas (processes or machines) screen
requests: each append runs in one transaction that first takes the advisory lock
``pg_advisory_xact_lock``, then reads the last seq and hash, inserts the batch and commits
before returning. Writers therefore queue up on one ordered chain, with no gaps and no forks,
and a decision is durable (committed, ``synchronous_commit = on``) before it is acknowledged.

Usage::

    from audit.screening.log import load_or_create_key
    from audit.screening.log_pg import PostgresAuditLog
    log = PostgresAuditLog("postgresql://audit@db:5432/audit", key=load_or_create_key())
    log.append([record])
    assert log.verify().ok
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from audit.db import PgConnection, create_schema, prepared, redact_url
from audit.screening.log import (
    _COLUMNS,
    _SCHEMA,
    _VERIFY_BATCH,
    LOG_SCHEMA_VERSION,
    AuditLogError,
    SQLAuditLog,
)

PG_SCHEMA = "audit_log"


class PostgresAuditLog(SQLAuditLog):
    """The decision log in a PostgreSQL database; safe for many threads, processes and machines.

    ``url`` is a ``postgresql://`` URL; the tables live in the schema ``audit_log`` (created on
    first use). ``key``, ``key_path`` and ``retain_text`` mean what they mean for
    :class:`~audit.screening.log.SQLiteAuditLog`. :meth:`verify` streams the chain through a
    server-side cursor on a connection of its own, so it neither loads the log into memory nor
    blocks appends.
    """

    def __init__(
        self,
        url: str,
        *,
        key: bytes | None = None,
        retain_text: bool = False,
        key_path: str | Path | None = None,
    ) -> None:
        self.url = url
        super().__init__(key, retain_text, key_path=key_path)

    @property
    def location(self) -> str:
        """The database URL, password hidden."""
        return redact_url(self.url)

    def _connect(self) -> PgConnection:
        conn = PgConnection(self.url, schema=PG_SCHEMA)
        try:
            conn.execute("SET synchronous_commit = on")  # acknowledged means on disk
        except BaseException:
            conn.close()
            raise
        return conn

    def _open(self) -> PgConnection:
        import psycopg

        def refusal(exc: Exception) -> AuditLogError:
            return AuditLogError(
                f"Cannot open the audit log in {self.location!r}: {str(exc).strip()}. Check "
                "that the URL's user may create tables in the database, or point "
                "--database-url at another database."
            )

        return prepared(
            self._connect(),
            lambda c: create_schema(
                c, _SCHEMA, LOG_SCHEMA_VERSION, self._refuse_version, lock_name="audit log"
            ),
            psycopg.Error,
            refusal,
        )

    def _stream(self) -> Iterator[Any]:
        conn = self._connect()
        try:
            yield from conn.stream(f"SELECT {_COLUMNS} FROM entries ORDER BY seq", _VERIFY_BATCH)
        finally:
            conn.close()


__all__ = ["PG_SCHEMA", "PostgresAuditLog"]
