"""Shared fixtures: one session-wide AUDIT_HOME and one real MiniLM backbone."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Before any project import reads it: every test of the session shares one state folder, never
# the user's own.
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="audit-test-home-"))
os.environ["AUDIT_HOME"] = str(_SESSION_HOME)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def audit_home() -> Path:
    return _SESSION_HOME


@pytest.fixture(scope="session")
def backbone():
    from probes import Backbone

    return Backbone.load("minilm")


@pytest.fixture(scope="session")
def sentiment_small():
    from probes import load_dataset

    return load_dataset("rotten_tomatoes", max_samples=400, seed=0)
