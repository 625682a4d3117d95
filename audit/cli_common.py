"""Helpers every ``audit`` command module shares: JSON output and one-line user errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps
from typing import Any

import click

from audit.errors import AuditError


def emit_json(payload: Any) -> None:
    """Print ``payload`` as indented JSON on stdout (non-JSON values as strings)."""
    click.echo(json.dumps(payload, indent=1, default=str))


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the library's own errors into one clean line and exit status 1."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from probes.errors import ProbesError

        try:
            return fn(*args, **kwargs)
        except (ProbesError, AuditError) as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper
