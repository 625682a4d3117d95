"""Hosting and auditing layer over the probes library: reports, benchmarks, CLI.

Depends on ``probes``; ``probes`` never imports ``audit``. The report functions load on first
use, so importing a light module (``audit.errors``) does not pull in torch and plotly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from audit.errors import AuditError

if TYPE_CHECKING:
    from audit.report import build_report, render_html, render_markdown, write_report

__all__ = ["AuditError", "build_report", "render_html", "render_markdown", "write_report"]
_LAZY = {"build_report", "render_html", "render_markdown", "write_report"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module("audit.report"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'audit' has no attribute {name!r}")
