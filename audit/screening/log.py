"""The tamper-evident audit log of screening decisions: append-only, hash-chained, MAC-signed.

Every allow/flag/block decision the screening layer makes becomes one :class:`DecisionRecord`,
appended to an :class:`AuditLog`. The SQLite implementation (:class:`SQLiteAuditLog`, one file at
``<AUDIT_HOME>/screening/audit_log.sqlite3`` by default) stores, per entry:

* ``seq``: 1, 2, 3, ... with no gaps;
* ``body``: the canonical JSON text of ``{"seq": seq, "record": record}``, i.e.
  ``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``. The text itself
  is stored and hashed, so floats round-trip exactly;
* ``prev_hash``: the previous entry's ``entry_hash`` (64 zeros for the first entry);
* ``entry_hash = sha256(bytes.fromhex(prev_hash) + body.encode("utf-8"))``;
* ``mac = HMAC-SHA256(key, entry_hash)`` with the owner's secret key, so that rewriting the whole
  chain (recomputing every hash) is detected by anyone without the key;
* indexed copies of ``time``, ``tenant_id``, ``decision``, ``screen``, ``kind`` and
  ``decision_id`` for filtering (verification checks they agree with the signed body).

:class:`audit.screening.log_pg.PostgresAuditLog` keeps the same rows in a PostgreSQL database,
for server replicas that share one chain; both are :class:`SQLAuditLog`, which holds the
chaining, signing, reading and verifying they share.

Truncating the tail of a chain, or a rewrite by someone who holds the key, leaves a consistent
chain: export the chain head (:meth:`AuditLog.export_head`, ``audit log export-head``) now and
then to a file kept elsewhere, and pass those heads to :meth:`AuditLog.verify`.

Usage::

    from audit.screening.log import SQLiteAuditLog, make_record
    log = SQLiteAuditLog()      # key: AUDIT_LOG_KEY or <AUDIT_HOME>/screening/log.key
    record = make_record("some request", screen="harm", screen_version="v1",
                         backbone_fingerprint=fp, layers=[4], score=0.93,
                         block_threshold=0.9, flag_threshold=0.5, decision="block")
    log.append([record])                    # durable (fsynced) when it returns
    assert log.verify().ok
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import heapq
import hmac
import itertools
import json
import logging
import math
import os
import re
import secrets
import sqlite3
import stat
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal, Protocol, Self, get_args, runtime_checkable

from audit.db import DBConnection, begin_write, database_errors, integrity_errors, prepared
from audit.sqlite_db import connect, create_schema, rollback
from probes.errors import CorruptArtifactError, InvalidInputError
from probes.home import audit_home

logger = logging.getLogger(__name__)

Decision = Literal["allow", "flag", "block"]
RecordKind = Literal["request", "generation", "corpus"]
DECISIONS: tuple[str, ...] = get_args(Decision)
RECORD_KINDS: tuple[str, ...] = get_args(RecordKind)

LOG_SCHEMA_VERSION = 1
ZERO_HASH = "0" * 64
KEY_ENV = "AUDIT_LOG_KEY"
KEY_BYTES = 32
LOG_FILENAME = "audit_log.sqlite3"
KEY_FILENAME = "log.key"
BUSY_TIMEOUT_MS = 30_000
APPEND_LOCK = "audit log append"
_VERIFY_BATCH = 1000
_HEX64 = re.compile(r"[0-9a-f]{64}")
_KEY_ID_LABEL = b"alignment-audit screening log key id"
CSV_COLUMNS: tuple[str, ...] = (
    "seq",
    "time",
    "tenant_id",
    "head_id",
    "decision",
    "screen",
    "screen_version",
    "score",
    "block_threshold",
    "flag_threshold",
    "request_hash",
    "text",
    "top_tokens",
    "entry_hash",
)


class AuditLogError(CorruptArtifactError):
    """The audit-log file cannot be opened or written as is (damaged, newer schema, wrong key)."""


class AuditKeyError(InvalidInputError):
    """The audit-log MAC key is missing or malformed."""


# ---------------------------------------------------------------------------------- helpers
def canonical_json(obj: Any) -> str:
    """Return the canonical JSON text of ``obj``: sorted keys, no spaces, UTF-8 kept, no NaN.

    Raises :class:`InvalidInputError` if ``obj`` holds something JSON cannot represent exactly.
    """
    try:
        return json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"An audit-log record must be JSON-serialisable with finite numbers: {exc}. "
            "Pass plain str/int/float/bool/None, lists and dicts with string keys."
        ) from exc


def request_hash(text: str) -> str:
    """Return the sha256 hex digest of a request's UTF-8 text (what the log keeps instead of it)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class _RandomIds:
    """Decision ids from the OS's random source, read a few kilobytes at a time.

    Serving makes one id per request: one ``os.urandom`` call makes 340 ids, and taking one is
    a ``list.pop`` (atomic, so threads need no lock). A forked process starts with an empty
    pool, so it never repeats its parent's ids.
    """

    _HEX_CHARS = 24  # 12 random bytes
    _PER_READ = 340

    def __init__(self) -> None:
        self._pool: list[str] = []
        os.register_at_fork(after_in_child=self._pool.clear)

    def next(self) -> str:
        try:
            return self._pool.pop()
        except IndexError:
            n = self._HEX_CHARS
            chars = os.urandom(n // 2 * self._PER_READ).hex()
            self._pool.extend("dec_" + chars[i : i + n] for i in range(0, len(chars), n))
            return self._pool.pop()


_random_ids = _RandomIds()


def new_decision_id() -> str:
    """Return a fresh random decision id: ``"dec_"`` followed by 24 hex characters."""
    return _random_ids.next()


def chain_hash(prev_hash: str, body: str) -> str:
    """Return ``sha256(bytes.fromhex(prev_hash) + body.encode("utf-8"))`` as hex: one chain link."""
    return hashlib.sha256(bytes.fromhex(prev_hash) + body.encode("utf-8")).hexdigest()


def entry_mac(key: bytes, entry_hash: str) -> str:
    """Return ``HMAC-SHA256(key, entry_hash)`` as hex (the hash is signed as its ASCII hex text)."""
    return hmac.new(key, entry_hash.encode("ascii"), hashlib.sha256).hexdigest()


def key_id(key: bytes) -> str:
    """Return a short public identifier of a key (an HMAC of a fixed label; reveals nothing)."""
    return hmac.new(key, _KEY_ID_LABEL, hashlib.sha256).hexdigest()[:16]


def utc_time(value: str | datetime | None = None) -> str:
    """Return ``value`` (or now) as a UTC ISO-8601 string with microseconds, e.g. ``...+00:00``.

    A naive datetime or string is taken as UTC. Strings in this one format sort in time order,
    which the log's time filters rely on.
    """
    if value is None:
        moment = datetime.now(UTC)
    elif isinstance(value, datetime):
        moment = value
    else:
        try:
            moment = datetime.fromisoformat(str(value))
        except ValueError as exc:
            raise InvalidInputError(
                f"Not an ISO-8601 time: {value!r}. Give e.g. 2024-05-01 or "
                "2024-05-01T12:00:00+00:00."
            ) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def default_log_path() -> Path:
    """Return ``<AUDIT_HOME>/screening/audit_log.sqlite3`` (AUDIT_HOME read now)."""
    return audit_home() / "screening" / LOG_FILENAME


def default_key_path() -> Path:
    """Return ``<AUDIT_HOME>/screening/log.key`` (AUDIT_HOME read now)."""
    return audit_home() / "screening" / KEY_FILENAME


# ---------------------------------------------------------------------------------- the key
def _parse_key(text: str, source: str) -> bytes:
    cleaned = text.strip()
    try:
        key = bytes.fromhex(cleaned)
    except ValueError:
        key = b""
    if len(key) < KEY_BYTES:
        raise AuditKeyError(
            f"The audit-log key from {source} is not {KEY_BYTES} or more bytes of hex "
            f"(found {len(cleaned)} characters). Put {2 * KEY_BYTES}+ hex digits there, e.g. from "
            'python -c "import secrets; print(secrets.token_hex(32))", or restore the key the log '
            "was written with."
        )
    return key


def load_key(path: str | Path | None = None) -> bytes:
    """Return the audit-log MAC key: ``AUDIT_LOG_KEY`` (hex) if set, else the hex key file.

    Unlike :func:`load_or_create_key` this never creates a key: verifying a log with a fresh key
    would only report every entry as forged. Raises :class:`AuditKeyError` when there is none.
    """
    env = os.environ.get(KEY_ENV)
    if env:
        return _parse_key(env, f"the environment variable {KEY_ENV}")
    key_path = Path(path).expanduser() if path is not None else default_key_path()
    if not key_path.is_file():
        raise AuditKeyError(
            f"No audit-log key at {str(key_path)!r}. Set {KEY_ENV} to the log's key (hex) or "
            "point --key-file at the key file the log was written with."
        )
    _warn_if_readable(key_path)
    return _parse_key(key_path.read_text(encoding="ascii", errors="replace"), repr(str(key_path)))


def load_or_create_key(path: str | Path | None = None) -> bytes:
    """Return the audit-log MAC key, creating a random 32-byte one on first use.

    ``AUDIT_LOG_KEY`` (hex) overrides the file. Otherwise the key is read from ``path`` (default
    ``<AUDIT_HOME>/screening/log.key``, hex text); if absent, ``secrets.token_bytes(32)`` is
    written there atomically with file mode 0600 (two processes racing both end with the same
    key: the file is linked into place only if it does not exist yet).

    The key is a MAC secret, not a password: it must be kept in the clear because it signs every
    entry, so it is stored as is (not hashed) and should live apart from the log (another disk or
    a secret store), since whoever holds both can rewrite the log undetectably except against
    exported heads. Rejects a key that is not 32+ bytes of hex with an :class:`AuditKeyError`.
    """
    env = os.environ.get(KEY_ENV)
    if env:
        return _parse_key(env, f"the environment variable {KEY_ENV}")
    key_path = Path(path).expanduser() if path is not None else default_key_path()
    if key_path.is_file():
        return load_key(key_path)
    key_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=key_path.parent, prefix=f".{key_path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(secrets.token_bytes(KEY_BYTES).hex() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        with contextlib.suppress(FileExistsError):  # another process made it first: use theirs
            os.link(tmp, key_path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    _fsync_dir(key_path.parent)
    logger.info("created the audit-log key %s", key_path)
    return load_key(key_path)


def _describe(key: object) -> str:
    """Describe a bad key without revealing it."""
    return f"{len(key)} bytes" if isinstance(key, bytes) else f"a {type(key).__name__}"


def _warn_if_readable(path: Path) -> None:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning(
            "the audit-log key %s is readable by others (mode %o): chmod 600 it", path, mode & 0o777
        )


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---------------------------------------------------------------------------------- records
def _finite(name: str, value: object) -> float:
    if isinstance(value, bool | str | bytes) or not (
        isinstance(value, int | float) or hasattr(value, "__float__")
    ):
        raise InvalidInputError(f"{name} must be a number. Got {value!r} instead.")
    number = float(value)  # type: ignore[arg-type]
    if not math.isfinite(number):
        raise InvalidInputError(f"{name} must be finite. Got {number!r} instead.")
    return number


@dataclass(frozen=True)
class DecisionRecord:
    """One screening decision as logged; build it with :meth:`create` (or :func:`make_record`).

    ``text`` is None unless the caller asked to retain it *and* the log's ``retain_text`` allows
    it; ``request_hash`` (sha256 of the UTF-8 text) is always kept. Values are normalised on
    construction (floats, UTC time format, lists), so a record read back equals the one appended.
    """

    decision_id: str
    time: str
    tenant_id: str | None
    head_id: str | None
    request_hash: str
    text: str | None
    screen: str
    screen_version: str
    backbone_fingerprint: str
    layers: list[int]
    score: float
    block_threshold: float
    flag_threshold: float
    decision: Decision
    top_tokens: list[tuple[str, float]] = field(default_factory=list)
    kind: RecordKind = "request"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        def put(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        if not isinstance(self.decision_id, str) or not self.decision_id:
            raise InvalidInputError(
                "decision_id must be a non-empty string (see new_decision_id()). "
                f"Got {self.decision_id!r}."
            )
        put("time", utc_time(self.time))
        for name in ("tenant_id", "head_id", "text"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise InvalidInputError(f"{name} must be a string or None. Got {value!r} instead.")
        for name in ("screen", "screen_version", "backbone_fingerprint"):
            if not isinstance(getattr(self, name), str):
                raise InvalidInputError(f"{name} must be a string. Got {getattr(self, name)!r}.")
        if not isinstance(self.request_hash, str) or not _HEX64.fullmatch(self.request_hash):
            raise InvalidInputError(
                "request_hash must be a lowercase sha256 hex digest (use request_hash(text)). "
                f"Got {self.request_hash!r} instead."
            )
        if self.decision not in DECISIONS:
            raise InvalidInputError(
                f"decision must be one of {list(DECISIONS)}. Got {self.decision!r} instead."
            )
        if self.kind not in RECORD_KINDS:
            raise InvalidInputError(
                f"kind must be one of {list(RECORD_KINDS)}. Got {self.kind!r} instead."
            )
        layers = []
        for layer in self.layers:
            if isinstance(layer, bool) or not (
                isinstance(layer, int) or hasattr(layer, "__index__")
            ):
                raise InvalidInputError(f"layers must be integers. Got {self.layers!r} instead.")
            layers.append(int(layer))
        put("layers", layers)
        score = _finite("score", self.score)
        if not 0.0 <= score <= 1.0:
            raise InvalidInputError(
                f"score must be a calibrated probability in [0, 1]. Got {score!r} instead."
            )
        put("score", score)
        put("block_threshold", _finite("block_threshold", self.block_threshold))
        put("flag_threshold", _finite("flag_threshold", self.flag_threshold))
        tokens: list[tuple[str, float]] = []
        for pair in self.top_tokens:
            if (
                isinstance(pair, str | bytes)
                or not isinstance(pair, Sequence)
                or len(pair) != 2
                or not isinstance(pair[0], str)
            ):
                raise InvalidInputError(
                    f"top_tokens must be [token, contribution] pairs. Got {pair!r} instead."
                )
            tokens.append((pair[0], _finite("a top_tokens contribution", pair[1])))
        put("top_tokens", tokens)
        if not isinstance(self.extra, Mapping):
            raise InvalidInputError(f"extra must be a dict. Got {type(self.extra).__name__}.")
        put("extra", json.loads(canonical_json(dict(self.extra))))  # a private, JSON-exact copy

    @classmethod
    def create(
        cls,
        text: str,
        *,
        screen: str,
        screen_version: str,
        backbone_fingerprint: str,
        layers: Sequence[int],
        score: float,
        block_threshold: float,
        flag_threshold: float,
        decision: Decision,
        top_tokens: Sequence[Sequence[Any]] = (),
        tenant_id: str | None = None,
        head_id: str | None = None,
        kind: RecordKind = "request",
        extra: Mapping[str, Any] | None = None,
        retain_text: bool = False,
        time: str | datetime | None = None,
        decision_id: str | None = None,
    ) -> DecisionRecord:
        """Return a record for ``text``: a new decision_id, the time now and the text's sha256.

        The text itself is dropped unless ``retain_text=True``.
        """
        if not isinstance(text, str):
            raise InvalidInputError(f"text must be a string. Got {type(text).__name__} instead.")
        return cls(
            decision_id=decision_id or new_decision_id(),
            time=utc_time(time),
            tenant_id=tenant_id,
            head_id=head_id,
            request_hash=request_hash(text),
            text=text if retain_text else None,
            screen=screen,
            screen_version=screen_version,
            backbone_fingerprint=backbone_fingerprint,
            layers=list(layers),
            score=score,
            block_threshold=block_threshold,
            flag_threshold=flag_threshold,
            decision=decision,
            top_tokens=[tuple(p) for p in top_tokens],  # type: ignore[misc]
            kind=kind,
            extra=dict(extra or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the record as plain JSON-ready data (top_tokens as ``[token, value]`` lists)."""
        data = asdict(self)
        data["top_tokens"] = [[t, v] for t, v in self.top_tokens]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DecisionRecord:
        """Return the record :meth:`to_dict` produced; raises InvalidInputError if malformed."""
        names = {f.name for f in fields(cls)}
        if not isinstance(data, Mapping):
            raise InvalidInputError(f"A decision record must be an object. Got {data!r}.")
        unknown = sorted(set(data) - names)
        if unknown:
            raise InvalidInputError(f"Unknown decision-record fields {unknown}.")
        try:
            return cls(**data)
        except TypeError as exc:
            raise InvalidInputError(f"A decision record is incomplete: {exc}.") from exc


def make_record(text: str, *, retain_text: bool = False, **fields: Any) -> DecisionRecord:
    """Return ``DecisionRecord.create(text, retain_text=retain_text, **fields)``."""
    return DecisionRecord.create(text, retain_text=retain_text, **fields)


@dataclass(frozen=True)
class LogEntry:
    """One stored entry: its place in the chain, its hashes, its MAC and the record."""

    seq: int
    prev_hash: str
    entry_hash: str
    mac: str
    record: DecisionRecord

    def to_dict(self) -> dict[str, Any]:
        """Return the entry as JSON-ready data (the record nested under ``"record"``)."""
        return {
            "seq": self.seq,
            "prev_hash": self.prev_hash,
            "entry_hash": self.entry_hash,
            "mac": self.mac,
            "record": self.record.to_dict(),
        }

    def head(self) -> dict[str, Any]:
        """Return this entry as a chain head: ``{"seq", "entry_hash", "mac", "time"}``."""
        return {
            "seq": self.seq,
            "entry_hash": self.entry_hash,
            "mac": self.mac,
            "time": self.record.time,
        }


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of verifying a log.

    ``n_records`` counts the entries found intact (all of them when ``ok``; those before the
    first bad one otherwise). ``first_bad_seq`` and ``problem`` name the first fault; ``head`` is
    the last intact entry as a chain head (the log's head when ``ok``), None for an empty log.
    """

    ok: bool
    n_records: int
    first_bad_seq: int | None = None
    problem: str | None = None
    head: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the result as JSON-ready data."""
        return asdict(self)


def entry_body(seq: int, record: DecisionRecord) -> str:
    """Return the canonical JSON text stored and hashed for the entry ``seq`` holding ``record``."""
    return canonical_json({"seq": seq, "record": record.to_dict()})


# ---------------------------------------------------------------------------------- interface
@runtime_checkable
class AuditLog(Protocol):
    """What the screening layer needs from a decision log; :class:`SQLiteAuditLog` is one."""

    def append(self, records: Sequence[DecisionRecord]) -> list[LogEntry]:
        """Append the records as one durable batch; return their entries (the acknowledgement)."""
        ...

    def query(
        self,
        *,
        tenant_id: str | None = None,
        decision: str | None = None,
        screen: str | None = None,
        kind: str | None = None,
        since: str | datetime | None = None,
        until: str | datetime | None = None,
        limit: int = 1000,
        offset: int = 0,
        before_seq: int | None = None,
    ) -> list[LogEntry]:
        """Return the matching entries, newest first."""
        ...

    def get(self, decision_id: str) -> LogEntry | None:
        """Return the entry of one decision, or None."""
        ...

    def count(
        self,
        *,
        tenant_id: str | None = None,
        decision: str | None = None,
        screen: str | None = None,
        kind: str | None = None,
        since: str | datetime | None = None,
        until: str | datetime | None = None,
    ) -> int:
        """Return how many entries match."""
        ...

    def verify(self, heads: Sequence[Mapping[str, Any]] = ()) -> VerifyResult:
        """Check the whole chain (and the exported heads given) and name the first fault."""
        ...

    def export_head(self) -> dict[str, Any] | None:
        """Return the last entry as ``{"seq", "entry_hash", "mac", "time"}``, None when empty."""
        ...

    def close(self) -> None:
        """Release the storage."""
        ...


# ---------------------------------------------------------------------------------- SQLite
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS entries (
        seq INTEGER PRIMARY KEY,
        body TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        entry_hash TEXT NOT NULL,
        mac TEXT NOT NULL,
        decision_id TEXT NOT NULL UNIQUE,
        time TEXT NOT NULL,
        tenant_id TEXT,
        decision TEXT NOT NULL,
        screen TEXT NOT NULL,
        kind TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS entries_time ON entries (time)",
    "CREATE INDEX IF NOT EXISTS entries_tenant ON entries (tenant_id, seq)",
    "CREATE INDEX IF NOT EXISTS entries_decision ON entries (decision, seq)",
    "CREATE INDEX IF NOT EXISTS entries_screen ON entries (screen, seq)",
    "CREATE INDEX IF NOT EXISTS entries_kind ON entries (kind, seq)",
)
_COLUMNS = (
    "seq, body, prev_hash, entry_hash, mac, decision_id, time, tenant_id, decision, screen, kind"
)
_INDEXED = ("decision_id", "time", "tenant_id", "decision", "screen", "kind")
_FILTER_COLUMNS = ("tenant_id", "decision", "screen", "kind")


def _connect(path: Path) -> sqlite3.Connection:
    return connect(
        path,
        busy_timeout_ms=BUSY_TIMEOUT_MS,
        pragmas=("journal_mode = WAL", "synchronous = FULL"),  # on disk before commit returns
    )


class SQLAuditLog:
    """The decision log as SQL tables, whatever the database; see the module docstring.

    :class:`SQLiteAuditLog` (one file) and :class:`audit.screening.log_pg.PostgresAuditLog` (a
    PostgreSQL database) are its two kinds: they open the connection and stream rows for
    :meth:`verify`; everything else (chaining, signing, reading, verifying) is this class's.

    ``key`` is the MAC key (default: :func:`load_or_create_key` at ``key_path``, read when first
    needed, so reading entries never needs it). ``retain_text=False`` strips every record's text
    before it is written, whatever the caller put there. One connection serves every thread,
    serialised by a lock; each batch is chained inside a write transaction that excludes every
    other writer (:func:`audit.db.begin_write`), so concurrent writers queue up instead of
    forking the chain.
    """

    def __init__(
        self,
        key: bytes | None = None,
        retain_text: bool = False,
        *,
        key_path: str | Path | None = None,
    ) -> None:
        self.retain_text = retain_text
        if key is not None and (not isinstance(key, bytes) or len(key) < KEY_BYTES):
            raise AuditKeyError(
                f"The audit-log key must be {KEY_BYTES} or more bytes. Got {_describe(key)}: use "
                "load_or_create_key() or secrets.token_bytes(32)."
            )
        self._key = key
        self._key_path = key_path
        self._lock = threading.RLock()
        self._conn: DBConnection | None = self._open()

    # -- connection --------------------------------------------------------------------------
    @property
    def location(self) -> str:
        """Where the log lives, for messages: a file path or a database URL without password."""
        raise NotImplementedError

    def _open(self) -> DBConnection:
        raise NotImplementedError

    def _stream(self) -> Iterator[Any]:
        """Yield every entry row in seq order, on a connection of its own, in batches."""
        raise NotImplementedError

    def _refuse_version(self, found: str) -> None:
        raise AuditLogError(
            f"The audit log {self.location!r} has schema_version {found!r}, but this "
            f"code reads schema_version {LOG_SCHEMA_VERSION} or older. Upgrade the "
            "alignment-audit package, or point --db at another log."
        )

    def _connection(self) -> DBConnection:
        if self._conn is None:
            raise AuditLogError(
                f"The audit log {self.location!r} is closed; open a new {type(self).__name__}."
            )
        return self._conn

    @property
    def key(self) -> bytes:
        """The MAC key (loaded or created on first use)."""
        if self._key is None:
            self._key = load_or_create_key(self._key_path)
        return self._key

    def close(self) -> None:
        """Close the connection (calling it twice is harmless)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- writing -----------------------------------------------------------------------------
    def append(self, records: Sequence[DecisionRecord]) -> list[LogEntry]:
        """Append ``records`` as one transaction and return their entries once on disk.

        The batch is chained from the last stored entry inside a ``BEGIN IMMEDIATE`` transaction
        (group commit: one fsync per batch). When this returns, the records survive a crash or
        ``kill -9``; if it raises, none of the batch was written. Raises InvalidInputError for a
        decision_id already logged, :class:`AuditLogError` if the key is not the log's key.
        """
        batch = list(records)
        if not batch:
            return []
        for record in batch:
            if not isinstance(record, DecisionRecord):
                raise InvalidInputError(
                    f"append takes DecisionRecord objects. Got {type(record).__name__}."
                )
        if not self.retain_text:
            batch = [replace(r, text=None) if r.text is not None else r for r in batch]
        key = self.key
        my_key_id = key_id(key)
        entries: list[LogEntry] = []
        with self._lock:
            conn = self._connection()
            begin_write(conn, APPEND_LOCK)
            try:
                row = conn.execute("SELECT value FROM meta WHERE key = 'key_id'").fetchone()
                if row is None:
                    conn.execute("INSERT INTO meta (key, value) VALUES ('key_id', ?)", (my_key_id,))
                elif row["value"] != my_key_id:
                    raise AuditLogError(
                        f"The audit log {self.location!r} is signed with the key of id "
                        f"{row['value']}, but the key in use has id {my_key_id}. Restore the log's "
                        f"key file or set {KEY_ENV} to it; a new key needs a new log file."
                    )
                last = conn.execute(
                    "SELECT seq, entry_hash FROM entries ORDER BY seq DESC LIMIT 1"
                ).fetchone()
                seq, prev = (last["seq"], last["entry_hash"]) if last else (0, ZERO_HASH)
                for record in batch:
                    seq += 1
                    body = entry_body(seq, record)
                    digest = chain_hash(prev, body)
                    entry = LogEntry(seq, prev, digest, entry_mac(key, digest), record)
                    conn.execute(
                        f"INSERT INTO entries ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                        (
                            seq,
                            body,
                            prev,
                            digest,
                            entry.mac,
                            record.decision_id,
                            record.time,
                            record.tenant_id,
                            record.decision,
                            record.screen,
                            record.kind,
                        ),
                    )
                    entries.append(entry)
                    prev = digest
                conn.execute("COMMIT")
            except integrity_errors() as exc:
                rollback(conn)
                raise InvalidInputError(
                    f"A decision_id in this batch is already in the audit log ({exc}). Give each "
                    "record a fresh id (make_record / new_decision_id() do)."
                ) from exc
            except BaseException:
                rollback(conn)
                raise
        return entries

    # -- reading -----------------------------------------------------------------------------
    @staticmethod
    def _where(
        tenant_id: str | None,
        decision: str | None,
        screen: str | None,
        kind: str | None,
        since: str | datetime | None,
        until: str | datetime | None,
        before_seq: int | None = None,
    ) -> tuple[str, list[object]]:
        clauses: list[str] = []
        params: list[object] = []
        if decision is not None and decision not in DECISIONS:
            raise InvalidInputError(
                f"decision must be one of {list(DECISIONS)}. Got {decision!r} instead."
            )
        if kind is not None and kind not in RECORD_KINDS:
            raise InvalidInputError(f"kind must be one of {list(RECORD_KINDS)}. Got {kind!r}.")
        for column, value in (
            ("tenant_id", tenant_id),
            ("decision", decision),
            ("screen", screen),
            ("kind", kind),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            clauses.append("time >= ?")
            params.append(utc_time(since))
        if until is not None:
            clauses.append("time < ?")
            params.append(utc_time(until))
        if before_seq is not None:
            clauses.append("seq < ?")
            params.append(int(before_seq))
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params

    def _entry(self, row: Any) -> LogEntry:
        try:
            data = json.loads(row["body"])
            record = DecisionRecord.from_dict(data["record"])
        except (ValueError, KeyError, TypeError) as exc:
            raise AuditLogError(
                f"The audit log entry seq {row['seq']} in {self.location!r} cannot be read "
                f"({exc}); run `audit log verify` to see what was damaged."
            ) from exc
        return LogEntry(row["seq"], row["prev_hash"], row["entry_hash"], row["mac"], record)

    def query(
        self,
        *,
        tenant_id: str | None = None,
        decision: str | None = None,
        screen: str | None = None,
        kind: str | None = None,
        since: str | datetime | None = None,
        until: str | datetime | None = None,
        limit: int = 1000,
        offset: int = 0,
        before_seq: int | None = None,
    ) -> list[LogEntry]:
        """Return the entries matching every filter given, newest (highest seq) first.

        ``since`` is inclusive and ``until`` exclusive (ISO-8601 strings or datetimes, naive ones
        taken as UTC). ``before_seq`` keeps entries with a smaller seq (keyset paging that a
        concurrent append cannot shift). Filters read the indexed columns; run :meth:`verify`
        to check them against the signed records.
        """
        if limit < 0 or offset < 0:
            raise InvalidInputError(
                f"limit and offset must be >= 0. Got limit={limit}, offset={offset}."
            )
        where, params = self._where(tenant_id, decision, screen, kind, since, until, before_seq)
        with self._lock:
            rows = (
                self._connection()
                .execute(
                    f"SELECT {_COLUMNS} FROM entries{where} ORDER BY seq DESC LIMIT ? OFFSET ?",
                    [*params, int(limit), int(offset)],
                )
                .fetchall()
            )
        return [self._entry(r) for r in rows]

    def get(self, decision_id: str) -> LogEntry | None:
        """Return the entry logging ``decision_id``, or None if there is none."""
        with self._lock:
            row = (
                self._connection()
                .execute(f"SELECT {_COLUMNS} FROM entries WHERE decision_id = ?", (decision_id,))
                .fetchone()
            )
        return None if row is None else self._entry(row)

    def count(
        self,
        *,
        tenant_id: str | None = None,
        decision: str | None = None,
        screen: str | None = None,
        kind: str | None = None,
        since: str | datetime | None = None,
        until: str | datetime | None = None,
    ) -> int:
        """Return how many entries match the filters (same meaning as in :meth:`query`)."""
        where, params = self._where(tenant_id, decision, screen, kind, since, until)
        with self._lock:
            row = (
                self._connection()
                .execute(f"SELECT COUNT(*) FROM entries{where}", params)
                .fetchone()
            )
        return int(row[0])

    def export_head(self) -> dict[str, Any] | None:
        """Return the last entry as ``{"seq", "entry_hash", "mac", "time"}``; None when empty.

        Keep these heads away from the log (``audit log export-head --out FILE``): verifying
        against them detects a truncated tail or a rewrite by someone who holds the key.
        """
        with self._lock:
            row = (
                self._connection()
                .execute(f"SELECT {_COLUMNS} FROM entries ORDER BY seq DESC LIMIT 1")
                .fetchone()
            )
        if row is None:
            return None
        return {
            "seq": int(row["seq"]),
            "entry_hash": str(row["entry_hash"]),
            "mac": str(row["mac"]),
            "time": str(row["time"]),
        }

    def distinct(self, column: str) -> list[str]:
        """Return the distinct non-null values of one filter column, sorted.

        ``column`` is ``tenant_id``, ``decision``, ``screen`` or ``kind``: what a browser offers
        as filter choices (read from the indexed columns, like :meth:`query`).
        """
        if column not in _FILTER_COLUMNS:
            raise InvalidInputError(
                f"column must be one of {list(_FILTER_COLUMNS)}. Got {column!r} instead."
            )
        with self._lock:
            rows = (
                self._connection()
                .execute(
                    f"SELECT DISTINCT {column} FROM entries WHERE {column} IS NOT NULL "
                    f"ORDER BY {column}"
                )
                .fetchall()
            )
        return [str(r[0]) for r in rows]

    def time_range(self) -> tuple[str, str] | None:
        """Return the times of the oldest and newest entries (UTC ISO-8601); None when empty."""
        with self._lock:
            row = self._connection().execute("SELECT MIN(time), MAX(time) FROM entries").fetchone()
        if row is None or row[0] is None:
            return None
        return str(row[0]), str(row[1])

    def verify(self, heads: Sequence[Mapping[str, Any]] = ()) -> VerifyResult:
        """Check every entry in seq order and each exported head; name the first fault found.

        Per entry: the body parses to a valid record whose seq is the row's (else the rows were
        reordered), seq follows the previous one (else records were removed), ``prev_hash`` is the
        previous ``entry_hash``, the body hashes to ``entry_hash`` (else the content was edited),
        the MAC is right for this key (else the chain was rewritten without the key, or this is
        the wrong key), and the indexed columns agree with the body. Each head must match the
        entry at its seq (else the tail was truncated or the log rewritten). Rows are streamed
        in batches; memory does not grow with the log.
        """
        self._connection()  # refuse a closed log
        wanted = _parse_heads(heads)
        verifier = _Verifier(self.key, wanted)
        try:
            for row in self._stream():
                if not verifier.check(row):
                    break
            else:
                verifier.finish()
        except database_errors() as exc:
            verifier.fail(
                verifier.expected,
                f"The log file cannot be read past seq {verifier.expected - 1}: {exc}.",
            )
        result = verifier.result()
        if verifier.bad_mac and result.problem:
            stored = self._meta("key_id")
            if stored is not None and stored != key_id(self.key):
                result = replace(
                    result,
                    problem=result.problem
                    + f" Note: the key in use (id {key_id(self.key)}) is not the key this log was "
                    f"written with (id {stored}); verify with the log's own key.",
                )
        return result

    def _meta(self, name: str) -> str | None:
        with self._lock:
            row = (
                self._connection()
                .execute("SELECT value FROM meta WHERE key = ?", (name,))
                .fetchone()
            )
        return None if row is None else str(row["value"])


class SQLiteAuditLog(SQLAuditLog):
    """The decision log in one SQLite file (WAL, ``synchronous=FULL``); see the module docstring.

    ``key`` is the MAC key (default: :func:`load_or_create_key` at ``key_path``, read when first
    needed, so reading entries never needs it). ``retain_text=False`` strips every record's text
    before it is written, whatever the caller put there.

    One connection serves every thread, serialised by a lock; several processes may open the same
    file: each batch is chained inside a ``BEGIN IMMEDIATE`` transaction, so concurrent writers
    queue up instead of forking the chain. :meth:`verify` reads on a connection of its own, in
    batches, so it neither loads the log into memory nor blocks appends.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        key: bytes | None = None,
        retain_text: bool = False,
        *,
        key_path: str | Path | None = None,
    ) -> None:
        self.path = Path(path).expanduser() if path is not None else default_log_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        super().__init__(key, retain_text, key_path=key_path)

    @property
    def location(self) -> str:
        """The log file's path."""
        return str(self.path)

    def _open(self) -> sqlite3.Connection:
        try:
            conn = _connect(self.path)
        except sqlite3.DatabaseError as exc:
            raise self._damaged(exc) from exc
        return prepared(
            conn,
            lambda c: create_schema(c, _SCHEMA, LOG_SCHEMA_VERSION, self._refuse_version),
            sqlite3.DatabaseError,
            self._damaged,
        )

    def _damaged(self, exc: Exception) -> AuditLogError:
        return AuditLogError(
            f"Cannot open the audit log {str(self.path)!r}: {exc}. Point --db (or the path) at a "
            "valid log, or move the damaged file aside (keep it as evidence) to start a new one."
        )

    def _stream(self) -> Iterator[sqlite3.Row]:
        conn = _connect(self.path)
        try:
            cursor = conn.execute(f"SELECT {_COLUMNS} FROM entries ORDER BY seq")
            while rows := cursor.fetchmany(_VERIFY_BATCH):
                yield from rows
        finally:
            conn.close()


def _parse_heads(heads: Sequence[Mapping[str, Any]]) -> dict[int, Mapping[str, Any]]:
    wanted: dict[int, Mapping[str, Any]] = {}
    for i, head in enumerate(heads):
        try:
            seq = int(head["seq"])
            str(head["entry_hash"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(
                f"Exported head #{i + 1} is not a chain head ({exc}): each must be an object with "
                'at least "seq" and "entry_hash", as `audit log export-head` writes.'
            ) from exc
        if seq < 1:
            raise InvalidInputError(f"Exported head #{i + 1} has seq {seq}; seqs start at 1.")
        previous = wanted.get(seq)
        if previous is not None and previous["entry_hash"] != head["entry_hash"]:
            raise InvalidInputError(
                f"Two exported heads claim seq {seq} with different hashes; the heads file "
                "itself was altered or mixes two logs."
            )
        wanted[seq] = head
    return wanted


class _Verifier:
    """The state of one streaming verification: the previous entry and the heads still to meet."""

    def __init__(self, key: bytes, heads: dict[int, Mapping[str, Any]]) -> None:
        self.key = key
        self.heads = heads
        self.expected = 1
        self.prev_hash = ZERO_HASH
        self.n_ok = 0
        self.last_head: dict[str, Any] | None = None
        self.bad_seq: int | None = None
        self.problem: str | None = None
        self.bad_mac = False

    def fail(self, seq: int, problem: str) -> bool:
        self.bad_seq, self.problem = seq, problem
        return False

    def check(self, row: Any) -> bool:
        """Return True if the row is intact (and remember it), else record the fault."""
        seq = row["seq"]
        try:
            if not isinstance(row["body"], str):
                raise ValueError(f"the body is a {type(row['body']).__name__}, not JSON text")
            data = json.loads(row["body"])
            if not isinstance(data, dict) or set(data) != {"seq", "record"}:
                raise ValueError('the body is not {"seq": ..., "record": ...}')
            record = DecisionRecord.from_dict(data["record"])
        except (ValueError, TypeError) as exc:
            return self.fail(
                seq,
                f"Record seq {seq} is unparseable: {exc}. Its stored JSON was damaged or edited.",
            )
        if seq < self.expected:  # only a row before seq 1: rows are streamed in seq order
            return self.fail(
                seq,
                f"Record seq {seq} should not exist: seqs start at 1, so this row was inserted "
                "before the first record.",
            )
        if seq != self.expected:
            missing = (
                f"Record seq {self.expected} is"
                if seq == self.expected + 1
                else f"Records seq {self.expected} to seq {seq - 1} are"
            )
            return self.fail(
                self.expected,
                f"{missing} missing: the log jumps from seq {self.expected - 1} to seq "
                f"{seq}, so "
                f"{'a record was' if seq == self.expected + 1 else 'records were'} removed (or renumbered).",
            )
        if data["seq"] != seq:
            return self.fail(
                seq,
                f"Record seq {seq} holds the content of entry seq {data['seq']!r}: rows were "
                "reordered (or their content swapped).",
            )
        if row["prev_hash"] != self.prev_hash:
            return self.fail(
                seq,
                f"Record seq {seq} has a broken hash link: its prev_hash is not the entry_hash of "
                f"seq {seq - 1}" + (" (the first must be 64 zeros)." if seq == 1 else "."),
            )
        digest = chain_hash(self.prev_hash, row["body"])
        if not hmac.compare_digest(digest, str(row["entry_hash"])):
            return self.fail(
                seq,
                f"Record seq {seq} was edited: its content no longer hashes to its stored "
                "entry_hash.",
            )
        if not hmac.compare_digest(entry_mac(self.key, digest), str(row["mac"])):
            self.bad_mac = True
            return self.fail(
                seq,
                f"Record seq {seq} has a bad MAC: the chain from here on was recomputed by "
                "someone without the log's key (or this is not the log's key).",
            )
        if entry_body(seq, record) != row["body"]:
            return self.fail(
                seq,
                f"Record seq {seq} is not in canonical form: its stored JSON does not round-trip.",
            )
        for column in _INDEXED:
            if row[column] != getattr(record, column):
                return self.fail(
                    seq,
                    f"Record seq {seq} was edited: its {column} column says {row[column]!r} but "
                    f"the signed record says {getattr(record, column)!r}.",
                )
        head = self.heads.pop(seq, None)
        if head is not None and (
            head["entry_hash"] != digest or ("mac" in head and head["mac"] != row["mac"])
        ):
            return self.fail(
                seq,
                f"Record seq {seq} no longer matches the exported head for seq {seq}: the log "
                "was rewritten at or before this entry (by someone holding the key), or its tail "
                "was truncated and appended to again.",
            )
        self.expected = seq + 1
        self.prev_hash = digest
        self.n_ok += 1
        self.last_head = {
            "seq": seq,
            "entry_hash": digest,
            "mac": str(row["mac"]),
            "time": record.time,
        }
        return True

    def finish(self) -> None:
        """Fault the heads beyond the end of the log: its tail was truncated."""
        if self.heads:
            seq = min(self.heads)
            self.fail(
                seq,
                f"The log ends at seq {self.expected - 1} but an exported head records seq {seq}: "
                f"the tail was truncated (record seq {seq} and any after it were removed).",
            )

    def result(self) -> VerifyResult:
        return VerifyResult(
            ok=self.problem is None,
            n_records=self.n_ok,
            first_bad_seq=self.bad_seq,
            problem=self.problem,
            head=self.last_head,
        )


# ---------------------------------------------------------------------------------- export
def iter_entries(log: AuditLog, *, page: int = 1000, **filters: Any) -> Iterator[LogEntry]:
    """Yield every entry matching ``filters`` (as for ``query``), newest first, a page at a time."""
    before: int | None = None
    while True:
        batch = log.query(limit=page, before_seq=before, **filters)
        yield from batch
        if len(batch) < page:
            return
        before = batch[-1].seq


def iter_matching(
    log: AuditLog,
    *,
    tenant_ids: Sequence[str] = (),
    decisions: Sequence[str] = (),
    screens: Sequence[str] = (),
    kind: str | None = None,
    since: str | datetime | None = None,
    until: str | datetime | None = None,
    page: int = 1000,
) -> Iterator[LogEntry]:
    """Yield the entries matching any of the tenants, decisions and screens given, newest first.

    An empty sequence means no filter on that field; several values are ORed (one indexed query
    per combination, merged by seq), the fields ANDed. ``kind``, ``since`` and ``until`` are as
    for ``query``.
    """

    def choices(values: Sequence[str]) -> list[str | None]:
        return list(dict.fromkeys(values)) or [None]  # None: no filter on this field

    combos = itertools.product(choices(tenant_ids), choices(decisions), choices(screens))
    streams = [
        iter_entries(
            log,
            page=page,
            tenant_id=tenant,
            decision=decision,
            screen=screen,
            kind=kind,
            since=since,
            until=until,
        )
        for tenant, decision, screen in combos
    ]
    yield from heapq.merge(*streams, key=lambda entry: -entry.seq)


def write_csv(entries: Iterable[LogEntry], fh: IO[str]) -> int:
    """Write ``entries`` as CSV rows (``CSV_COLUMNS``, header first); return how many were written."""
    writer = csv.writer(fh)
    writer.writerow(CSV_COLUMNS)
    n = 0
    for entry in entries:
        r = entry.record
        writer.writerow(
            [
                entry.seq,
                r.time,
                r.tenant_id or "",
                r.head_id or "",
                r.decision,
                r.screen,
                r.screen_version,
                repr(r.score),
                repr(r.block_threshold),
                repr(r.flag_threshold),
                r.request_hash,
                r.text or "",
                canonical_json([[t, v] for t, v in r.top_tokens]),
                entry.entry_hash,
            ]
        )
        n += 1
    return n


def export_csv(log: AuditLog, path_or_file: str | Path | IO[str], **filters: Any) -> int:
    """Write the matching entries as CSV (newest first) and return how many rows were written.

    Columns: ``seq, time, tenant_id, head_id, decision, screen, screen_version, score,
    block_threshold, flag_threshold, request_hash, text, top_tokens`` (JSON), ``entry_hash``.
    ``filters`` are those of ``query`` (tenant_id, decision, screen, kind, since, until).
    """
    unknown = set(filters) - {"tenant_id", "decision", "screen", "kind", "since", "until"}
    if unknown:
        raise InvalidInputError(f"Unknown export filters {sorted(unknown)}.")
    if isinstance(path_or_file, str | Path):
        target = Path(path_or_file).expanduser()
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "w", newline="", encoding="utf-8") as fh:
            return write_csv(iter_entries(log, **filters), fh)
    return write_csv(iter_entries(log, **filters), path_or_file)


__all__ = [
    "CSV_COLUMNS",
    "DECISIONS",
    "KEY_ENV",
    "LOG_SCHEMA_VERSION",
    "RECORD_KINDS",
    "ZERO_HASH",
    "AuditKeyError",
    "AuditLog",
    "AuditLogError",
    "DecisionRecord",
    "LogEntry",
    "SQLAuditLog",
    "SQLiteAuditLog",
    "VerifyResult",
    "canonical_json",
    "chain_hash",
    "default_key_path",
    "default_log_path",
    "entry_body",
    "entry_mac",
    "export_csv",
    "iter_entries",
    "iter_matching",
    "key_id",
    "load_key",
    "load_or_create_key",
    "make_record",
    "new_decision_id",
    "request_hash",
    "utc_time",
    "write_csv",
]
