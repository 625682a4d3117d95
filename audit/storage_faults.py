"""Storage faults named for people: a full disk, a read-only store, a failing device.

SQLite and the file system report these in their own words (``ENOSPC``, ``database or disk is
full``, ``attempt to write a readonly database``), often wrapped in the project's own errors.
:func:`storage_fault` looks through an exception and its causes for one of them, so the API can
answer 507 / 503 with the fix instead of a generic 500, and a failed training job can say why.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from audit.errors import AuditError

FaultKind = Literal["full", "read_only", "io"]

_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_READ_ONLY_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
_IO_ERRNOS = frozenset({errno.EIO})
# SQLite's primary result codes (the low byte of an extended code).
_SQLITE_FULL, _SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_CANTOPEN = 13, 8, 10, 14


@dataclass(frozen=True)
class StorageFault:
    """What went wrong with the storage, and the low-level detail that said so."""

    kind: FaultKind
    detail: str

    @property
    def status(self) -> int:
        """The HTTP status that reports it: 507 for a full store, else 503."""
        return 507 if self.kind == "full" else 503

    @property
    def code(self) -> str:
        return {"full": "storage_full", "read_only": "storage_read_only", "io": "storage_error"}[
            self.kind
        ]

    def message(self, *, for_request: bool = True) -> str:
        """A sentence naming the fault and the fix (and, for a request, that none of it was kept)."""
        what = {
            "full": "The server's storage is full",
            "read_only": "The server's storage is read-only or not writable",
            "io": "The server's storage failed to write",
        }[self.kind]
        fix = {
            "full": "free space on the volume that holds AUDIT_HOME",
            "read_only": "make the AUDIT_HOME folder writable (remount it read-write, fix its "
            "permissions)",
            "io": "check the disk that holds AUDIT_HOME",
        }[self.kind]
        kept = "; nothing of this request was kept" if for_request else ""
        return f"{what} ({self.detail}){kept}. The operator must {fix}; then retry."


def _classify(exc: BaseException) -> StorageFault | None:
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        primary = code & 0xFF if isinstance(code, int) else None
        text = str(exc)
        if primary == _SQLITE_FULL or "disk is full" in text:
            return StorageFault("full", f"SQLite: {text}")
        if primary == _SQLITE_READONLY or "readonly database" in text:
            return StorageFault("read_only", f"SQLite: {text}")
        if primary in (_SQLITE_IOERR, _SQLITE_CANTOPEN) or "disk I/O error" in text:
            return StorageFault("io", f"SQLite: {text}")
        return None
    if isinstance(exc, OSError) and exc.errno is not None:
        where = f" at {exc.filename}" if exc.filename else ""
        detail = f"{exc.strerror or errno.errorcode.get(exc.errno, exc.errno)}{where}"
        if exc.errno in _FULL_ERRNOS:
            return StorageFault("full", detail)
        if exc.errno in _READ_ONLY_ERRNOS:
            return StorageFault("read_only", detail)
        if exc.errno in _IO_ERRNOS:
            return StorageFault("io", detail)
    return None


def storage_fault(exc: BaseException) -> StorageFault | None:
    """Return the storage fault behind ``exc`` (itself or a cause), or None if there is none."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        fault = _classify(current)
        if fault is not None:
            return fault
        current = current.__cause__ or current.__context__
    return None


class StorageFaultError(AuditError):
    """The store cannot be written; the message names the fault and the fix."""

    def __init__(self, fault: StorageFault, folder: Path) -> None:
        super().__init__(f"Cannot write to {str(folder)!r}: {fault.message(for_request=False)}")
        self.fault = fault


def check_writable(folder: Path) -> None:
    """Raise StorageFaultError unless a file can be created, synced and removed in ``folder``.

    A server checks this before it starts, so a read-only or full store stops it with one line
    instead of failing on the first decision it cannot log.
    """
    probe = folder / f".write-check-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as handle:
            handle.write(b"\0" * 4096)
            handle.flush()
            os.fsync(handle.fileno())
        probe.unlink()
    except OSError as exc:
        fault = storage_fault(exc) or StorageFault("io", str(exc))
        raise StorageFaultError(fault, folder) from exc
