"""One SQL connection interface over SQLite files and PostgreSQL, for the registry and the log.

The registry and the audit log are written as SQLite SQL (``?`` placeholders, rows read by
column name or index, explicit ``BEGIN``/``COMMIT``). :class:`PgConnection` gives a PostgreSQL
connection the same face: it rewrites ``?`` to psycopg's ``%s`` (values are always sent as
parameters, never pasted into the text), returns rows readable by name and by index, and keeps
the connection in autocommit mode so the callers' explicit transactions are the only ones.
Each component keeps its tables in a PostgreSQL schema of its own (``search_path``), so the
registry's and the log's ``meta`` tables never meet.

Writers serialise like SQLite's ``BEGIN IMMEDIATE``: :func:`begin_write` opens a transaction
and, on PostgreSQL, takes a transaction-level advisory lock (``pg_advisory_xact_lock``) that
the commit or rollback releases, so processes on several machines queue up the same way.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

from audit.errors import AuditError

URL_SCHEMES = ("postgresql", "postgres")
DATABASE_URL_ENV = "AUDIT_DATABASE_URL"
CONNECT_TIMEOUT_S = 10


class _Closable(Protocol):
    def close(self) -> None: ...


C = TypeVar("C", bound=_Closable)  # a connection


class DatabaseUrlError(AuditError, ValueError):
    """A database URL is not a PostgreSQL URL, or the server behind it cannot be reached."""


class DBCursor(Protocol):
    """The part of a DB-API cursor the registry and the log use."""

    rowcount: int

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def fetchmany(self, size: int = ...) -> list[Any]: ...


class DBConnection(Protocol):
    """The part of ``sqlite3.Connection`` the registry and the log use (PgConnection has it too)."""

    @property
    def in_transaction(self) -> bool: ...

    def execute(self, sql: str, parameters: Any = ..., /) -> Any: ...

    def close(self) -> None: ...


class Row(tuple[Any, ...]):
    """A result row readable by index (``row[0]``) and by column name (``row["seq"]``)."""

    _names: tuple[str, ...]

    def __new__(cls, values: Sequence[Any], names: tuple[str, ...]) -> Row:
        row = super().__new__(cls, values)
        row._names = names
        return row

    def __getitem__(self, item: Any) -> Any:  # type: ignore[override]
        if isinstance(item, str):
            try:
                return tuple.__getitem__(self, self._names.index(item))
            except ValueError:
                raise IndexError(f"No column named {item!r}") from None
        return tuple.__getitem__(self, item)

    def keys(self) -> list[str]:
        """Return the column names, in order (as ``sqlite3.Row.keys`` does)."""
        return list(self._names)


def _row_factory(cursor: Any) -> Callable[[Sequence[Any]], Row]:
    names = tuple(d.name for d in cursor.description or ())
    return lambda values: Row(values, names)


def is_database_url(value: object) -> bool:
    """Return whether ``value`` is a PostgreSQL URL (``postgresql://...`` or ``postgres://...``)."""
    return isinstance(value, str) and value.split("://", 1)[0].lower() in URL_SCHEMES


def redact_url(url: str) -> str:
    """Return ``url`` with its password (if any) replaced by ``***``, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = (parts.username or "") + ":***"
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{netloc[-1]}"))


def lock_key(name: str) -> int:
    """Return a stable signed 64-bit advisory-lock key for ``name``."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big", signed=True)


class PgConnection:
    """A psycopg 3 connection that answers the registry's and the log's SQLite-style SQL.

    ``schema`` names the PostgreSQL schema that holds this component's tables; it is created if
    missing (under an advisory lock, so replicas starting together do not race) and put first
    on the ``search_path``.
    """

    dialect = "postgres"

    def __init__(self, url: str, *, schema: str) -> None:
        import psycopg

        if not is_database_url(url):
            raise DatabaseUrlError(
                f"{redact_url(str(url))!r} is not a PostgreSQL URL. Give one like "
                "postgresql://user:password@host:5432/dbname."
            )
        self.url = url
        self.schema = schema
        try:
            self._conn = psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        except psycopg.Error as exc:
            raise DatabaseUrlError(
                f"Cannot connect to the PostgreSQL database {redact_url(url)!r}: "
                f"{str(exc).strip()}. Check that the server runs, the URL's host, port, user, "
                "password and database name, and that the database exists (createdb NAME)."
            ) from exc
        try:
            self._conn.row_factory = _row_factory  # type: ignore[assignment]
            self.execute("BEGIN")
            self.execute("SELECT pg_advisory_xact_lock(?)", (lock_key("schema:" + schema),))
            self._conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            self.execute("COMMIT")
            self._conn.execute(f'SET search_path TO "{schema}"')
        except BaseException:
            self._conn.close()
            raise

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction is open (as ``sqlite3.Connection.in_transaction``)."""
        from psycopg.pq import TransactionStatus

        return self._conn.info.transaction_status != TransactionStatus.IDLE

    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        """Run one statement written with ``?`` placeholders; return the psycopg cursor."""
        text = sql.replace("%", "%%").replace("?", "%s")
        return self._conn.execute(text, tuple(parameters))  # type: ignore[call-overload]

    def stream(self, sql: str, batch: int) -> Any:
        """Yield the rows of one query from a server-side cursor, ``batch`` rows at a time."""
        with self._conn.transaction(), self._conn.cursor(name="audit_stream") as cursor:
            cursor.row_factory = _row_factory  # type: ignore[assignment]
            cursor.itersize = batch
            cursor.execute(sql)
            yield from cursor

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()


def is_postgres(conn: object) -> bool:
    """Return whether ``conn`` is a PostgreSQL connection (else it is a SQLite one)."""
    return isinstance(conn, PgConnection)


def begin_write(conn: DBConnection, lock_name: str) -> None:
    """Open a write transaction that excludes every other writer of the same tables.

    SQLite: ``BEGIN IMMEDIATE`` (the file's write lock). PostgreSQL: ``BEGIN`` and then
    ``pg_advisory_xact_lock`` on ``lock_name`` (released by the commit or rollback).
    """
    if is_postgres(conn):
        conn.execute("BEGIN")
        try:
            conn.execute("SELECT pg_advisory_xact_lock(?)", (lock_key(lock_name),))
        except BaseException:
            rollback(conn)
            raise
    else:
        conn.execute("BEGIN IMMEDIATE")


def rollback(conn: DBConnection) -> None:
    """Roll back the open transaction, if the database has not already ended it itself.

    After some errors (a full disk, an I/O error) SQLite ends the transaction on its own; a
    ROLLBACK then would raise "no transaction is active" and hide the error that mattered.
    """
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def integrity_errors() -> tuple[type[Exception], ...]:
    """Return the exception types of a violated constraint (duplicate key), for both databases."""
    try:
        import psycopg
    except ImportError:
        return (sqlite3.IntegrityError,)
    return (sqlite3.IntegrityError, psycopg.IntegrityError)


def database_errors() -> tuple[type[Exception], ...]:
    """Return the exception types of a database that cannot be read or written, for both."""
    try:
        import psycopg
    except ImportError:
        return (sqlite3.DatabaseError,)
    return (sqlite3.DatabaseError, psycopg.DatabaseError)


def postgres_ddl(statement: str) -> str:
    """Return a SQLite CREATE statement in PostgreSQL's spelling (64-bit ints, doubles)."""
    return (
        statement.replace("INTEGER PRIMARY KEY", "BIGINT PRIMARY KEY")
        .replace(" INTEGER ", " BIGINT ")
        .replace(" REAL ", " DOUBLE PRECISION ")
    )


def has_table(conn: DBConnection, name: str) -> bool:
    """Return whether the table ``name`` exists (in the connection's own schema on PostgreSQL)."""
    if is_postgres(conn):
        row = conn.execute("SELECT to_regclass(?)", (name,)).fetchone()
        return row is not None and row[0] is not None
    sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
    return conn.execute(sql, (name,)).fetchone() is not None


def create_schema(
    conn: DBConnection,
    statements: Sequence[str],
    version: int,
    refuse: Callable[[str], None],
    *,
    lock_name: str = "schema",
) -> None:
    """Create the tables (idempotent) and record ``version``, in one write transaction.

    ``statements`` are written for SQLite; on PostgreSQL they pass through
    :func:`postgres_ddl`. ``refuse(found)`` is called, before anything is written, when the
    database already records a schema_version newer than ``version``; it raises the caller's
    own error.
    """
    pg = is_postgres(conn)
    begin_write(conn, lock_name)
    try:
        if has_table(conn, "meta"):
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is not None and is_newer(str(row["value"]), version):
                refuse(str(row["value"]))
        for statement in statements:
            conn.execute(postgres_ddl(statement) if pg else statement)
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?) ON CONFLICT DO NOTHING",
            (str(version),),
        )
        conn.execute("COMMIT")
    except BaseException:
        rollback(conn)
        raise


def prepared(
    conn: C,
    setup: Callable[[C], None],
    errors: type[Exception] | tuple[type[Exception], ...],
    refusal: Callable[[Exception], Exception],
) -> C:
    """Return ``conn`` once ``setup(conn)`` ran (schema creation, migrations).

    If setup fails the connection is closed: a database error of ``errors`` becomes
    ``refusal(exc)`` (a message naming the store and the fix), anything else propagates as is.
    """
    try:
        setup(conn)
    except errors as exc:
        conn.close()
        raise refusal(exc) from exc
    except BaseException:
        conn.close()
        raise
    return conn


def is_newer(found: str, version: int) -> bool:
    """Return whether a stored schema_version is unreadable or newer than ``version``."""
    try:
        return int(found) > version
    except ValueError:
        return True
