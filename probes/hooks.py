"""Hook names: parsing the residual-stream names that the fast extraction path serves."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import NamedTuple

from probes.errors import UnknownNameError

_RESID = re.compile(r"^blocks\.(\d+)\.(hook_resid_post|hook_out|hook_resid_pre|hook_in)$")
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


class ResidHook(NamedTuple):
    """A residual-stream hook: the input (``pre``) or output (``post``) of block ``layer``."""

    layer: int
    post: bool


def resid_post(layer: int) -> str:
    """Return the hook name of block ``layer``'s residual output."""
    return f"blocks.{layer}.hook_resid_post"


def parse_resid(hook_name: str) -> ResidHook | None:
    """Return the residual hook a name denotes, or None for any other hook."""
    match = _RESID.match(hook_name)
    if match is None:
        return None
    return ResidHook(int(match.group(1)), match.group(2) in ("hook_resid_post", "hook_out"))


def block_of(hook_name: str) -> int | None:
    """Return the block index a hook name lives in, or None for hooks outside the blocks."""
    match = _BLOCK.match(hook_name)
    return int(match.group(1)) if match else None


def check_hook_names(hook_names: Iterable[str], valid: Iterable[str]) -> list[str]:
    """Return ``hook_names`` as a list; raise UnknownNameError naming close valid names."""
    valid_set = set(valid)
    names = list(hook_names)
    if not names:
        raise UnknownNameError(
            "No hook names given; pass at least one, e.g. 'blocks.0.hook_resid_post'."
        )
    for name in names:
        if name not in valid_set:
            close = difflib.get_close_matches(name, sorted(valid_set), n=5, cutoff=0.6)
            resid = sorted(n for n in valid_set if n.endswith("hook_resid_post"))
            hint = f" Close matches: {', '.join(close)}." if close else ""
            raise UnknownNameError(
                f"Unknown hook name {name!r}.{hint} Residual-stream hooks of this backbone: "
                f"{', '.join(sorted(resid, key=lambda n: block_of(n) or 0))} "
                f"({len(valid_set)} hook names in all; Backbone.hook_names lists them)."
            )
    return names
