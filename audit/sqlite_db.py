"""SQLite files the workbench writes (tenant registry, audit log): one way to open and create them.

Connections use explicit transactions (``isolation_level=None``; writes open with ``BEGIN
IMMEDIATE``), so two processes never deadlock upgrading a read lock to a write lock. A file's
``meta`` table records its ``schema_version``; code refuses a file written by a newer version.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path


def connect(path: Path, *, busy_timeout_ms: int, pragmas: Sequence[str] = ()) -> sqlite3.Connection:
    """Return a connection shared across threads (callers lock), rows as ``sqlite3.Row``."""
    conn = sqlite3.connect(
        path, check_same_thread=False, isolation_level=None, timeout=busy_timeout_ms / 1000
    )
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
        for pragma in pragmas:
            conn.execute(f"PRAGMA {pragma}")
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


def create_schema(
    conn: sqlite3.Connection,
    statements: Sequence[str],
    version: int,
    refuse: Callable[[str], None],
) -> None:
    """Create the tables (idempotent) and record ``version``, in one write transaction.

    ``refuse(found)`` is called, before anything is written, when the file already records a
    schema_version that ``is_newer`` than ``version``; it raises the caller's own error.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        has_meta = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
        ).fetchone()
        if has_meta:
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is not None and is_newer(str(row["value"]), version):
                refuse(str(row["value"]))
        for statement in statements:
            conn.execute(statement)
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(version),)
        )
        conn.execute("COMMIT")
    except BaseException:
        rollback(conn)
        raise


def rollback(conn: sqlite3.Connection) -> None:
    """Roll back the open transaction, if SQLite has not already rolled it back itself.

    After some errors (a full disk, an I/O error) SQLite ends the transaction on its own; a
    ROLLBACK then would raise "no transaction is active" and hide the error that mattered.
    """
    if conn.in_transaction:
        conn.execute("ROLLBACK")
