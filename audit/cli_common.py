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


def backbone_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add --backbone, --device and --max-length, the options every command loading a backbone
    shares."""
    fn = click.option(
        "--max-length",
        type=click.IntRange(min=2),
        default=None,
        help="Cut texts to this many tokens (default: the model's context). Cuts are counted.",
    )(fn)
    fn = click.option(
        "--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto."
    )(fn)
    return click.option(
        "--backbone",
        "backbone_spec",
        default="minilm",
        show_default=True,
        help="Bundled alias (minilm, smollm2), a local HF model folder, or a HF model name.",
    )(fn)
