"""The audit package's exceptions."""

from __future__ import annotations


class AuditError(Exception):
    """Base class of every error the audit package raises on purpose; the CLI prints it as one line."""
