"""Where the workbench keeps its state: ``AUDIT_HOME`` if set, else the user data folder."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "alignment-audit"


def audit_home() -> Path:
    """Return the folder holding the store, registry, logs, heads and caches (created if absent).

    ``AUDIT_HOME`` wins when set; otherwise a per-user *data* folder (not a cache folder, which
    the system may purge).
    """
    env = os.environ.get("AUDIT_HOME")
    root = Path(env).expanduser() if env else Path(platformdirs.user_data_dir(APP_NAME))
    root.mkdir(parents=True, exist_ok=True)
    return root
