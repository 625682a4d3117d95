"""SQLite files the workbench writes (tenant registry, audit log): one way to open and create them.

Connections use explicit transactions (``isolation_level=None``; writes open with ``BEGIN
IMMEDIATE``), so two processes never deadlock upgrading a read lock to a write lock. A file's
``meta`` table records its ``schema_version``; code refuses a file written by a newer version.
Creating the tables and rolling back are shared with PostgreSQL (:mod:`audit.db`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from audit.db import create_schema, is_newer, rollback

__all__ = ["connect", "create_schema", "is_newer", "rollback"]


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
