"""The persistent tenant registry: tenants, API keys, corpora, heads, training jobs and exports.

One SQLite file (``<AUDIT_HOME>/registry.sqlite3`` by default) holds the rows, or, when several
server replicas share the registry, a PostgreSQL database (``database_url``; the tables live in
its schema ``audit_registry``). Each tenant's files (corpus texts, head weights) live under
``<registry folder>/tenants/<tenant_id>/`` either way, a folder replicas share by filesystem.
API keys are stored only as SHA-256 digests: the plaintext is handed out once and never written
anywhere.

Every training job records its owner (``host:pid:token`` of the process that created it) and a
heartbeat the owner refreshes while it lives; :meth:`Registry.recover_interrupted` fails only
the jobs whose owner is gone, so one replica starting never kills another's training.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import shutil
import socket
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, TypeVar

from audit.db import (
    DBConnection,
    PgConnection,
    begin_write,
    create_schema,
    is_database_url,
    is_postgres,
    prepared,
    redact_url,
    rollback,
)
from audit.errors import AuditError
from audit.sqlite_db import connect
from probes.home import audit_home

logger = logging.getLogger(__name__)

_R = TypeVar("_R")

SCHEMA_VERSION = 1
REGISTRY_FILENAME = "registry.sqlite3"
MAX_NAME_CHARS = 200
BUSY_TIMEOUT_MS = 10_000
JOB_STATUSES = ("queued", "running", "done", "failed")
HEAD_STATUSES = ("training", "ready", "failed")
PG_SCHEMA = "audit_registry"
JOB_LEASE_S = 120.0
HEARTBEAT_S = 20.0
_WRITE_LOCK = "registry"
INTERRUPTED_ERROR = (
    "interrupted: the server stopped before training finished; submit the head again"
)

_KEY_PREFIX = "ak"
# Far above a real key (~60 chars): anything longer is junk and is refused before hashing.
_MAX_KEY_CHARS = 256
_ID_HEX_CHARS = 12
_KEY_ID_RE = re.compile(rf"[0-9a-f]{{{_ID_HEX_CHARS}}}")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS tenants (
        tenant_id TEXT PRIMARY KEY, name TEXT NOT NULL, created_at TEXT NOT NULL,
        export_allowed INTEGER NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS api_keys (
        key_id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(tenant_id) ON DELETE CASCADE,
        key_sha256 TEXT NOT NULL, created_at TEXT NOT NULL, revoked_at TEXT)""",
    """CREATE TABLE IF NOT EXISTS corpora (
        corpus_id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(tenant_id) ON DELETE CASCADE,
        n_lines INTEGER NOT NULL, label_names TEXT NOT NULL, texts_hash TEXT NOT NULL,
        path TEXT NOT NULL, created_at TEXT NOT NULL)""",
    # corpus_id has no foreign key: a trained head outlives the corpus it was trained on.
    """CREATE TABLE IF NOT EXISTS heads (
        head_id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(tenant_id) ON DELETE CASCADE,
        corpus_id TEXT NOT NULL, kind TEXT NOT NULL, status TEXT NOT NULL, path TEXT,
        meta TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS jobs (
        job_id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(tenant_id) ON DELETE CASCADE,
        head_id TEXT NOT NULL REFERENCES heads(head_id) ON DELETE CASCADE,
        status TEXT NOT NULL, progress REAL NOT NULL, metrics TEXT NOT NULL, error TEXT,
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL, owner TEXT, heartbeat_at TEXT)""",
    # No foreign key: export records are an audit trail and outlive the tenant.
    """CREATE TABLE IF NOT EXISTS exports (
        export_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, corpus_id TEXT NOT NULL,
        head_id TEXT, layer INTEGER NOT NULL, created_at TEXT NOT NULL,
        n_bytes INTEGER NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS api_keys_by_tenant ON api_keys(tenant_id)",
    "CREATE INDEX IF NOT EXISTS corpora_by_tenant ON corpora(tenant_id)",
    "CREATE INDEX IF NOT EXISTS heads_by_tenant ON heads(tenant_id)",
    "CREATE INDEX IF NOT EXISTS jobs_by_tenant ON jobs(tenant_id)",
    "CREATE INDEX IF NOT EXISTS jobs_by_head ON jobs(head_id)",
    "CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs(status)",
    "CREATE INDEX IF NOT EXISTS exports_by_tenant ON exports(tenant_id)",
)
# Columns added after schema_version 1 shipped: added in place to older files, all nullable.
_ADDED_COLUMNS = (("jobs", "owner", "TEXT"), ("jobs", "heartbeat_at", "TEXT"))
# PostgreSQL has no implicit rowid: the tables listed in insertion order get one.
_ROWID_TABLES = ("tenants", "corpora", "heads", "exports")


class RegistryError(AuditError):
    """Base class of the registry's errors."""


class RegistryInputError(RegistryError, ValueError):
    """A value passed to the registry (name, count, status, JSON field) is not usable."""


class NotFoundError(RegistryError, LookupError):
    """A tenant, corpus, head or job id names nothing in the registry (or another tenant's row)."""


class SchemaVersionError(RegistryError):
    """The registry file was written by a newer version of the code than this one."""


@dataclass(frozen=True)
class Tenant:
    """A customer of the shared backbone."""

    tenant_id: str
    name: str
    created_at: str
    export_allowed: bool


class NewTenant(NamedTuple):
    """A freshly created tenant and its API key, the only time the plaintext key is available."""

    tenant: Tenant
    api_key: str


@dataclass(frozen=True)
class Corpus:
    """A corpus a tenant submitted; its texts live in the file at ``path``."""

    corpus_id: str
    tenant_id: str
    n_lines: int
    label_names: tuple[str, ...]
    texts_hash: str
    path: str
    created_at: str


@dataclass(frozen=True)
class HeadRecord:
    """A tenant's head: ``status`` is training, ready or failed; ``path`` is set once ready."""

    head_id: str
    tenant_id: str
    corpus_id: str
    kind: str
    status: str
    path: str | None
    meta: dict[str, Any]
    created_at: str
    updated_at: str


@dataclass(frozen=True)
class Job:
    """A training job for one head: ``status`` is queued, running, done or failed."""

    job_id: str
    tenant_id: str
    head_id: str
    status: str
    progress: float
    metrics: dict[str, Any]
    error: str | None
    created_at: str
    updated_at: str


@dataclass(frozen=True)
class ExportRecord:
    """One export of activations to a tenant: ids and sizes only, kept after the tenant goes."""

    export_id: str
    tenant_id: str
    corpus_id: str
    head_id: str | None
    layer: int
    created_at: str
    n_bytes: int


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(_ID_HEX_CHARS // 2)}"


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_CHARS:
        shown = name if not isinstance(name, str) else name[:40] + ("..." if len(name) > 40 else "")
        raise RegistryInputError(
            f"A tenant name must be a string of 1 to {MAX_NAME_CHARS} characters, not blank. "
            f"Got {shown!r} instead; pass a short name such as 'acme-research'."
        )
    if any(not ch.isprintable() for ch in name):
        raise RegistryInputError(
            f"A tenant name must not contain control characters. Got {name!r} instead; "
            "remove the newlines, tabs or other control characters."
        )
    return name.strip()


def _check_count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RegistryInputError(f"'{what}' must be an int >= 0. Got {value!r} instead.")
    return value


def _check_text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise RegistryInputError(f"'{what}' must be a non-empty string. Got {value!r} instead.")
    return value


def _dump_json(value: object, what: str) -> str:
    if not isinstance(value, Mapping):
        raise RegistryInputError(
            f"'{what}' must be a dict of JSON values. Got {type(value).__name__} instead."
        )
    try:
        return json.dumps(dict(value), sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise RegistryInputError(
            f"'{what}' must hold only JSON values (str, int, float, bool, None, list, dict): "
            f"{exc}. Convert arrays with .tolist() and paths with str()."
        ) from exc


def _record(cls: type[_R], row: Any, **decoded: object) -> _R:
    """Return the dataclass ``cls`` built from a row whose columns are named like its fields.

    Columns that are not fields (a job's owner and heartbeat, PostgreSQL's rowid) are skipped.
    """
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    values = {k: v for k, v in zip(row.keys(), tuple(row), strict=True) if k in names}
    return cls(**{**values, **decoded})


def _tenant(row: Any) -> Tenant:
    return _record(Tenant, row, export_allowed=bool(row["export_allowed"]))


def _corpus(row: Any) -> Corpus:
    return _record(Corpus, row, label_names=tuple(json.loads(row["label_names"])))


def _head(row: Any) -> HeadRecord:
    return _record(HeadRecord, row, meta=json.loads(row["meta"]))


def _job(row: Any) -> Job:
    return _record(Job, row, progress=float(row["progress"]), metrics=json.loads(row["metrics"]))


def _export(row: Any) -> ExportRecord:
    return _record(ExportRecord, row)


def _insert(conn: DBConnection, table: str, record: object, **encoded: object) -> None:
    """Insert a dataclass as one row; ``encoded`` replaces fields stored as JSON text."""
    # Table and column names come from this module's own dataclasses, never from a caller.
    values = {f.name: getattr(record, f.name) for f in fields(record)} | encoded  # type: ignore[arg-type]
    marks = ", ".join("?" * len(values))
    conn.execute(
        f"INSERT INTO {table} ({', '.join(values)}) VALUES ({marks})", tuple(values.values())
    )


def new_owner_id() -> str:
    """Return a fresh job-owner id for this process: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def _owner_is_gone(owner: str | None, heartbeat_at: str | None, cutoff: str) -> bool:
    """Return whether a job's owner is known dead: no owner, a stale heartbeat, or a dead pid."""
    if not owner or not heartbeat_at or heartbeat_at < cutoff:
        return True
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False  # another machine: only its heartbeat can tell
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, under another user
        return False
    return False


class Registry:
    """The registry of tenants and what they own, in SQLite or PostgreSQL; thread-safe.

    ``path`` is the SQLite file (default ``<AUDIT_HOME>/registry.sqlite3``); tenants' files live
    in ``<its folder>/tenants/``. With ``database_url`` (``postgresql://...``) the rows go to
    that database instead and ``path`` only places the tenants' folder.

    One connection serves every thread, serialised by a lock: the HTTP server calls in from
    several threads. Writes exclude one another across processes (SQLite's write lock, or a
    PostgreSQL advisory lock), so several processes, or several machines on PostgreSQL, can
    share one registry. On PostgreSQL a background thread refreshes, every ``heartbeat_s``
    seconds, the heartbeat of the unfinished jobs this process owns.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        database_url: str | None = None,
        heartbeat_s: float = HEARTBEAT_S,
    ) -> None:
        self.path = (
            Path(path).expanduser() if path is not None else audit_home() / REGISTRY_FILENAME
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.database_url = database_url
        self.owner_id = new_owner_id()
        self._lock = threading.RLock()
        self._conn: DBConnection | None = self._open()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        if database_url is not None:
            self._heartbeat = threading.Thread(
                target=self._beat, args=(heartbeat_s,), name="registry-heartbeat", daemon=True
            )
            self._heartbeat.start()

    @property
    def location(self) -> str:
        """Where the rows live, for messages: the SQLite path or the URL without password."""
        return redact_url(self.database_url) if self.database_url else str(self.path)

    # -- connection --------------------------------------------------------------------------

    def _open(self) -> DBConnection:
        if self.database_url is not None:
            return self._open_postgres(self.database_url)
        try:  # a damaged file can fail as early as the journal-mode pragma
            conn = connect(
                self.path,
                busy_timeout_ms=BUSY_TIMEOUT_MS,
                pragmas=("foreign_keys = ON", "journal_mode = WAL"),
            )
        except sqlite3.DatabaseError as exc:
            raise self._damaged(exc) from exc
        return prepared(conn, self._create_schema, sqlite3.DatabaseError, self._damaged)

    def _open_postgres(self, url: str) -> PgConnection:
        import psycopg

        def refusal(exc: Exception) -> RegistryError:
            return RegistryError(
                f"Cannot open the tenant registry in {self.location!r}: {str(exc).strip()}. "
                "Check that the URL's user may create tables in the database, or point "
                "--database-url at another database."
            )

        return prepared(
            PgConnection(url, schema=PG_SCHEMA),
            lambda c: self._create_schema(c, lock_name=_WRITE_LOCK),
            psycopg.Error,
            refusal,
        )

    def _create_schema(self, conn: DBConnection, lock_name: str = "schema") -> None:
        """Create the tables (or check their version) and add the columns newer than them."""
        create_schema(conn, _SCHEMA, SCHEMA_VERSION, self._refuse_version, lock_name=lock_name)
        self._add_columns(conn)

    @staticmethod
    def _add_columns(conn: DBConnection) -> None:
        """Add the columns newer than the file (idempotent), and PostgreSQL's rowids."""
        begin_write(conn, _WRITE_LOCK)
        try:
            if is_postgres(conn):
                for table, column, kind in _ADDED_COLUMNS:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {kind}")
                for table in _ROWID_TABLES:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS rowid BIGSERIAL")
            else:
                for table, column, kind in _ADDED_COLUMNS:
                    have = {row["name"] for row in conn.execute(f"PRAGMA table_info({table})")}
                    if column not in have:
                        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)
            raise

    def _damaged(self, exc: Exception) -> RegistryError:
        return RegistryError(
            f"Cannot open the tenant registry {str(self.path)!r}: {exc}. "
            "Point AUDIT_HOME (or the path) at a folder with a valid registry, or move the "
            "damaged file aside to start an empty one."
        )

    def _refuse_version(self, found: str) -> None:
        raise SchemaVersionError(
            f"The tenant registry {self.location!r} has schema_version {found!r}, "
            f"but this code reads schema_version {SCHEMA_VERSION} or older. Upgrade the "
            "alignment-audit package, or point AUDIT_HOME at another folder."
        )

    def _connection(self) -> DBConnection:
        if self._conn is None:
            raise RegistryError(
                f"The tenant registry {self.location!r} is closed; open a new Registry."
            )
        return self._conn

    @contextmanager
    def _write(self) -> Iterator[DBConnection]:
        with self._lock:
            conn = self._connection()
            begin_write(conn, _WRITE_LOCK)
            try:
                yield conn
            except BaseException:
                rollback(conn)
                raise
            conn.execute("COMMIT")

    def _rows(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        with self._lock:
            return list(self._connection().execute(sql, params).fetchall())

    def _beat(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            try:
                self.heartbeat()
            except Exception:  # a lost connection must not kill the thread; the lease tells
                logger.warning("could not refresh the training jobs' heartbeat", exc_info=True)

    def heartbeat(self) -> int:
        """Return how many unfinished jobs of this process had their heartbeat refreshed."""
        with self._lock:
            if self._conn is None:
                return 0
            return int(
                self._conn.execute(
                    "UPDATE jobs SET heartbeat_at = ? WHERE owner = ? "
                    "AND status IN ('queued', 'running')",
                    (_now(), self.owner_id),
                ).rowcount
            )

    def close(self) -> None:
        """Return nothing; close the connection (calling it twice is harmless)."""
        self._stop.set()
        if self._heartbeat is not None and self._heartbeat is not threading.current_thread():
            self._heartbeat.join(timeout=10)
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Registry:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- tenants and keys --------------------------------------------------------------------

    @staticmethod
    def _require_tenant(conn: DBConnection, tenant_id: str) -> None:
        if not conn.execute("SELECT 1 FROM tenants WHERE tenant_id = ?", (tenant_id,)).fetchone():
            raise NotFoundError(
                f"No tenant {tenant_id!r} in the registry; list tenants with `audit tenant list`."
            )

    @staticmethod
    def _issue_key(conn: DBConnection, tenant_id: str) -> str:
        key_id = secrets.token_hex(_ID_HEX_CHARS // 2)
        key = f"{_KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
        conn.execute(
            "INSERT INTO api_keys (key_id, tenant_id, key_sha256, created_at) VALUES (?, ?, ?, ?)",
            (key_id, tenant_id, _sha256(key), _now()),
        )
        return key

    def create_tenant(self, name: str) -> NewTenant:
        """Return the new tenant and its API key; the key is shown only here, never stored."""
        tenant = Tenant(_new_id("t"), _check_name(name), _now(), False)
        with self._write() as conn:
            _insert(conn, "tenants", tenant, export_allowed=int(tenant.export_allowed))
            key = self._issue_key(conn, tenant.tenant_id)
        logger.info("created tenant %s", tenant.tenant_id)
        return NewTenant(tenant, key)

    def authenticate(self, key: str) -> str | None:
        """Return the tenant_id a valid, unrevoked key belongs to, else None (never raises)."""
        if not isinstance(key, str) or len(key) > _MAX_KEY_CHARS or not key.isascii():
            return None
        parts = key.split("_", 2)
        if len(parts) != 3 or parts[0] != _KEY_PREFIX or not _KEY_ID_RE.fullmatch(parts[1]):
            return None
        rows = self._rows(
            "SELECT k.tenant_id, k.key_sha256 FROM api_keys k JOIN tenants t USING (tenant_id) "
            "WHERE k.key_id = ? AND k.revoked_at IS NULL",
            (parts[1],),
        )
        if rows and hmac.compare_digest(rows[0]["key_sha256"], _sha256(key)):
            return str(rows[0]["tenant_id"])
        return None

    def rotate_key(self, tenant_id: str) -> str:
        """Return a new API key for the tenant, after revoking every key it had."""
        with self._write() as conn:
            self._require_tenant(conn, tenant_id)
            conn.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE tenant_id = ? AND revoked_at IS NULL",
                (_now(), tenant_id),
            )
            key = self._issue_key(conn, tenant_id)
        logger.info("rotated the API key of tenant %s", tenant_id)
        return key

    def revoke_keys(self, tenant_id: str) -> int:
        """Return how many keys were revoked; the tenant cannot authenticate until rotated."""
        with self._write() as conn:
            self._require_tenant(conn, tenant_id)
            n_revoked = conn.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE tenant_id = ? AND revoked_at IS NULL",
                (_now(), tenant_id),
            ).rowcount
        logger.info("revoked %d API key(s) of tenant %s", n_revoked, tenant_id)
        return n_revoked

    def get_tenant(self, tenant_id: str) -> Tenant | None:
        """Return the tenant, or None if there is none with this id."""
        rows = self._rows("SELECT * FROM tenants WHERE tenant_id = ?", (tenant_id,))
        return _tenant(rows[0]) if rows else None

    def list_tenants(self) -> list[Tenant]:
        """Return every tenant, oldest first."""
        return [_tenant(row) for row in self._rows("SELECT * FROM tenants ORDER BY rowid")]

    def set_export_allowed(self, tenant_id: str, allowed: bool) -> Tenant:
        """Return the tenant after allowing (or forbidding) it to export activations."""
        with self._write() as conn:
            self._require_tenant(conn, tenant_id)
            conn.execute(
                "UPDATE tenants SET export_allowed = ? WHERE tenant_id = ?",
                (int(bool(allowed)), tenant_id),
            )
            row = conn.execute("SELECT * FROM tenants WHERE tenant_id = ?", (tenant_id,)).fetchone()
        return _tenant(row)

    def _tenant_path(self, tenant_id: str) -> Path:
        if not re.fullmatch(rf"t_[0-9a-f]{{{_ID_HEX_CHARS}}}", tenant_id):
            # The id becomes a folder name: refuse anything that could climb out of tenants/.
            raise RegistryInputError(
                f"{tenant_id!r} is not a tenant id; ids look like 't_' and 12 hex digits."
            )
        return self.path.parent / "tenants" / tenant_id

    def tenant_dir(self, tenant_id: str) -> Path:
        """Return the tenant's files folder ``<registry folder>/tenants/<tenant_id>`` (created)."""
        with self._lock:
            self._require_tenant(self._connection(), tenant_id)
            folder = self._tenant_path(tenant_id)
            folder.mkdir(parents=True, exist_ok=True)
        return folder

    def delete_tenant(self, tenant_id: str) -> bool:
        """Return whether the tenant existed; its keys, corpora, heads, jobs and files are erased.

        Export records stay (they are the audit trail and hold only ids and sizes). Files are
        removed after the rows, so a crash in between leaves a folder that a second call cleans.
        """
        with self._write() as conn:
            existed = (
                conn.execute("DELETE FROM tenants WHERE tenant_id = ?", (tenant_id,)).rowcount > 0
            )
        try:
            folder = self._tenant_path(tenant_id)
        except RegistryInputError:
            return existed
        if folder.exists():
            try:
                shutil.rmtree(folder)
            except OSError as exc:
                raise RegistryError(
                    f"Tenant {tenant_id!r} was removed from the registry but its files at "
                    f"{str(folder)!r} could not be deleted ({exc}); fix the permissions and call "
                    "delete_tenant again."
                ) from exc
        if existed:
            logger.info("deleted tenant %s and its files", tenant_id)
        return existed

    def _remove_owned_file(self, tenant_id: str, path: str | None) -> None:
        """Remove ``path`` only if it lies inside the tenant's folder; other paths are not ours."""
        if not path:
            return
        target = Path(path).resolve()
        root = self._tenant_path(tenant_id).resolve()
        if target == root or not target.is_relative_to(root):
            logger.info("left %s in place: it is outside %s", target, root)
            return
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)

    # -- corpora -----------------------------------------------------------------------------

    def add_corpus(
        self,
        tenant_id: str,
        *,
        n_lines: int,
        label_names: Sequence[str],
        texts_hash: str,
        path: str | Path,
    ) -> Corpus:
        """Return the new corpus record for texts the caller already wrote to ``path``."""
        if isinstance(label_names, str) or not all(isinstance(x, str) for x in label_names):
            raise RegistryInputError(
                f"'label_names' must be a list of strings. Got {label_names!r} instead."
            )
        corpus = Corpus(
            corpus_id=_new_id("c"),
            tenant_id=tenant_id,
            n_lines=_check_count(n_lines, "n_lines"),
            label_names=tuple(label_names),
            texts_hash=_check_text(texts_hash, "texts_hash"),
            path=str(path),
            created_at=_now(),
        )
        with self._write() as conn:
            self._require_tenant(conn, tenant_id)
            _insert(conn, "corpora", corpus, label_names=json.dumps(list(corpus.label_names)))
        return corpus

    def get_corpus(self, tenant_id: str, corpus_id: str) -> Corpus | None:
        """Return the tenant's corpus, or None if it does not exist or is another tenant's."""
        rows = self._rows(
            "SELECT * FROM corpora WHERE corpus_id = ? AND tenant_id = ?", (corpus_id, tenant_id)
        )
        return _corpus(rows[0]) if rows else None

    def list_corpora(self, tenant_id: str) -> list[Corpus]:
        """Return the tenant's corpora, oldest first."""
        rows = self._rows("SELECT * FROM corpora WHERE tenant_id = ? ORDER BY rowid", (tenant_id,))
        return [_corpus(row) for row in rows]

    def delete_corpus(self, tenant_id: str, corpus_id: str) -> bool:
        """Return whether the tenant had this corpus; its file goes too if inside tenant_dir.

        Heads trained on the corpus stay: they hold weights, not the texts.
        """
        with self._write() as conn:
            row = conn.execute(
                "SELECT path FROM corpora WHERE corpus_id = ? AND tenant_id = ?",
                (corpus_id, tenant_id),
            ).fetchone()
            if row is None:
                return False
            conn.execute("DELETE FROM corpora WHERE corpus_id = ?", (corpus_id,))
        self._remove_owned_file(tenant_id, row["path"])
        return True

    # -- heads -------------------------------------------------------------------------------

    def add_head(self, tenant_id: str, *, corpus_id: str, kind: str) -> HeadRecord:
        """Return the new head record, in status "training", for one of the tenant's corpora."""
        now = _now()
        head = HeadRecord(
            head_id=_new_id("h"),
            tenant_id=tenant_id,
            corpus_id=corpus_id,
            kind=_check_text(kind, "kind"),
            status="training",
            path=None,
            meta={},
            created_at=now,
            updated_at=now,
        )
        with self._write() as conn:
            self._require_tenant(conn, tenant_id)
            if not conn.execute(
                "SELECT 1 FROM corpora WHERE corpus_id = ? AND tenant_id = ?",
                (corpus_id, tenant_id),
            ).fetchone():
                raise NotFoundError(
                    f"Tenant {tenant_id!r} has no corpus {corpus_id!r}; upload the corpus first "
                    "and pass the corpus_id it returns."
                )
            _insert(conn, "heads", head, meta="{}")
        return head

    def _update_head(self, head_id: str, sql: str, params: Sequence[object]) -> HeadRecord:
        with self._write() as conn:
            if conn.execute(sql, (*params, _now(), head_id)).rowcount == 0:
                raise NotFoundError(f"No head {head_id!r} in the registry; check the head_id.")
            row = conn.execute("SELECT * FROM heads WHERE head_id = ?", (head_id,)).fetchone()
        return _head(row)

    def mark_head_ready(
        self, head_id: str, *, path: str | Path, meta: Mapping[str, Any]
    ) -> HeadRecord:
        """Return the head after recording its saved weights at ``path`` and its metadata."""
        return self._update_head(
            head_id,
            "UPDATE heads SET status = 'ready', path = ?, meta = ?, updated_at = ? "
            "WHERE head_id = ?",
            (str(path), _dump_json(meta, "meta")),
        )

    def mark_head_failed(self, head_id: str, error: str) -> HeadRecord:
        """Return the head after marking it failed; the reason is kept in ``meta["error"]``."""
        with self._write() as conn:
            row = conn.execute("SELECT meta FROM heads WHERE head_id = ?", (head_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"No head {head_id!r} in the registry; check the head_id.")
            meta = {**json.loads(row["meta"]), "error": str(error)}
            conn.execute(
                "UPDATE heads SET status = 'failed', meta = ?, updated_at = ? WHERE head_id = ?",
                (json.dumps(meta, sort_keys=True), _now(), head_id),
            )
            row = conn.execute("SELECT * FROM heads WHERE head_id = ?", (head_id,)).fetchone()
        return _head(row)

    def get_head(self, tenant_id: str, head_id: str) -> HeadRecord | None:
        """Return the tenant's head, or None if it does not exist or is another tenant's."""
        rows = self._rows(
            "SELECT * FROM heads WHERE head_id = ? AND tenant_id = ?", (head_id, tenant_id)
        )
        return _head(rows[0]) if rows else None

    def head_by_id(self, head_id: str) -> HeadRecord | None:
        """Return the head whoever owns it (for the owner and the serving path), else None."""
        rows = self._rows("SELECT * FROM heads WHERE head_id = ?", (head_id,))
        return _head(rows[0]) if rows else None

    def list_heads(self, tenant_id: str, *, include_unready: bool = True) -> list[HeadRecord]:
        """Return the tenant's heads, oldest first; only ready ones if ``include_unready`` is off."""
        sql = "SELECT * FROM heads WHERE tenant_id = ?"
        if not include_unready:
            sql += " AND status = 'ready'"
        return [_head(row) for row in self._rows(sql + " ORDER BY rowid", (tenant_id,))]

    def delete_head(self, tenant_id: str, head_id: str) -> bool:
        """Return whether the tenant had this head; its jobs and its folder (if ours) go too."""
        with self._write() as conn:
            row = conn.execute(
                "SELECT path FROM heads WHERE head_id = ? AND tenant_id = ?", (head_id, tenant_id)
            ).fetchone()
            if row is None:
                return False
            conn.execute("DELETE FROM heads WHERE head_id = ?", (head_id,))
        self._remove_owned_file(tenant_id, row["path"])
        return True

    def count_heads(self, tenant_id: str | None = None) -> int:
        """Return how many heads exist, of every status, for one tenant or all of them."""
        if tenant_id is None:
            rows = self._rows("SELECT COUNT(*) FROM heads")
        else:
            rows = self._rows("SELECT COUNT(*) FROM heads WHERE tenant_id = ?", (tenant_id,))
        return int(rows[0][0])

    # -- jobs --------------------------------------------------------------------------------

    def create_job(self, tenant_id: str, head_id: str) -> Job:
        """Return a new queued training job for one of the tenant's heads."""
        now = _now()
        job = Job(_new_id("j"), tenant_id, head_id, "queued", 0.0, {}, None, now, now)
        with self._write() as conn:
            if not conn.execute(
                "SELECT 1 FROM heads WHERE head_id = ? AND tenant_id = ?", (head_id, tenant_id)
            ).fetchone():
                raise NotFoundError(
                    f"Tenant {tenant_id!r} has no head {head_id!r}; create the head first."
                )
            _insert(conn, "jobs", job, metrics="{}", owner=self.owner_id, heartbeat_at=now)
        return job

    def update_job(
        self,
        job_id: str,
        *,
        status: str | None = None,
        progress: float | None = None,
        metrics: Mapping[str, Any] | None = None,
        error: str | None = None,
    ) -> Job:
        """Return the job after changing the fields given; the others keep their values."""
        changes: dict[str, object] = {}
        if status is not None:
            if status not in JOB_STATUSES:
                raise RegistryInputError(
                    f"A job status must be one of {', '.join(JOB_STATUSES)}. Got {status!r} instead."
                )
            changes["status"] = status
        if progress is not None:
            if isinstance(progress, bool) or not isinstance(progress, int | float):
                raise RegistryInputError(f"'progress' must be a number. Got {progress!r} instead.")
            if not 0.0 <= progress <= 1.0:
                raise RegistryInputError(
                    f"'progress' must be a fraction in [0, 1]. Got {progress!r} instead."
                )
            changes["progress"] = float(progress)
        if metrics is not None:
            changes["metrics"] = _dump_json(metrics, "metrics")
        if error is not None:
            changes["error"] = str(error)
        # Column names come from the fixed keys above, never from the caller.
        assignments = ", ".join(f"{column} = ?" for column in changes)
        with self._write() as conn:
            sql = "UPDATE jobs SET " + assignments + (", " if changes else "") + "updated_at = ?"
            params = (*changes.values(), _now(), job_id)
            if conn.execute(sql + " WHERE job_id = ?", params).rowcount == 0:
                raise NotFoundError(f"No job {job_id!r} in the registry; check the job_id.")
            row = conn.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return _job(row)

    def get_job(self, tenant_id: str, job_id: str) -> Job | None:
        """Return the tenant's job, or None if it does not exist or is another tenant's."""
        rows = self._rows(
            "SELECT * FROM jobs WHERE job_id = ? AND tenant_id = ?", (job_id, tenant_id)
        )
        return _job(rows[0]) if rows else None

    def job_by_id(self, job_id: str) -> Job | None:
        """Return the job whoever owns it (for the owner's admin routes), else None."""
        rows = self._rows("SELECT * FROM jobs WHERE job_id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    def recover_interrupted(self, *, lease_s: float = JOB_LEASE_S) -> int:
        """Return how many unfinished jobs were orphaned; they and their heads become failed.

        The server calls this once at start, before it trains anything. On SQLite (one serving
        process) every job still queued or running belongs to a process that died, and its
        head must never look ready. On PostgreSQL other replicas may be training right now, so
        only the jobs whose owner is gone are failed: no owner recorded, no heartbeat for
        ``lease_s`` seconds, or an owner process on this host that no longer exists.
        """
        now = _now()
        cutoff = (datetime.now(UTC) - timedelta(seconds=lease_s)).isoformat(timespec="microseconds")
        shared = self.database_url is not None
        with self._write() as conn:
            rows = [
                row
                for row in conn.execute(
                    "SELECT job_id, head_id, owner, heartbeat_at FROM jobs "
                    "WHERE status IN ('queued', 'running')"
                ).fetchall()
                if not shared
                or (
                    row["owner"] != self.owner_id
                    and _owner_is_gone(row["owner"], row["heartbeat_at"], cutoff)
                )
            ]
            for row in rows:
                conn.execute(
                    "UPDATE jobs SET status = 'failed', error = ?, updated_at = ? WHERE job_id = ?",
                    (INTERRUPTED_ERROR, now, row["job_id"]),
                )
                head = conn.execute(
                    "SELECT meta FROM heads WHERE head_id = ? AND status != 'ready'",
                    (row["head_id"],),
                ).fetchone()
                if head is not None:
                    meta = {**json.loads(head["meta"]), "error": INTERRUPTED_ERROR}
                    conn.execute(
                        "UPDATE heads SET status = 'failed', meta = ?, updated_at = ? "
                        "WHERE head_id = ?",
                        (json.dumps(meta, sort_keys=True), now, row["head_id"]),
                    )
        if rows:
            logger.warning("marked %d interrupted training job(s) as failed", len(rows))
        return len(rows)

    # -- exports -----------------------------------------------------------------------------

    def log_export(
        self,
        tenant_id: str,
        *,
        corpus_id: str,
        head_id: str | None,
        layer: int,
        n_bytes: int,
    ) -> ExportRecord:
        """Return the record of one export of activations to the tenant, now in the audit trail."""
        record = ExportRecord(
            export_id=_new_id("x"),
            tenant_id=tenant_id,
            corpus_id=_check_text(corpus_id, "corpus_id"),
            head_id=head_id,
            layer=_check_count(layer, "layer"),
            created_at=_now(),
            n_bytes=_check_count(n_bytes, "n_bytes"),
        )
        with self._write() as conn:
            self._require_tenant(conn, tenant_id)
            _insert(conn, "exports", record)
        return record

    def list_exports(self, tenant_id: str | None = None) -> list[ExportRecord]:
        """Return the export records, oldest first, of one tenant or of all (deleted ones too)."""
        if tenant_id is None:
            rows = self._rows("SELECT * FROM exports ORDER BY rowid")
        else:
            rows = self._rows(
                "SELECT * FROM exports WHERE tenant_id = ? ORDER BY rowid", (tenant_id,)
            )
        return [_export(row) for row in rows]


def open_registry(path_or_url: str | Path | None = None, *, home: Path | None = None) -> Registry:
    """Return the registry a path or URL names: ``postgresql://...`` or a SQLite file.

    A URL keeps the rows in PostgreSQL and the tenants' files under ``home`` (default
    AUDIT_HOME); a path (default ``<home>/registry.sqlite3``) is the SQLite file.
    """
    root = Path(home) if home is not None else audit_home()
    if isinstance(path_or_url, str) and is_database_url(path_or_url):
        return Registry(root / REGISTRY_FILENAME, database_url=path_or_url)
    return Registry(path_or_url if path_or_url is not None else root / REGISTRY_FILENAME)
