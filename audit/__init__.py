"""Hosting and auditing layer over the probes library: reports, benchmarks, CLI.

Depends on ``probes``; ``probes`` never imports ``audit``.
"""

from audit.errors import AuditError
from audit.report import build_report, render_html, render_markdown, write_report

__all__ = ["AuditError", "build_report", "render_html", "render_markdown", "write_report"]
