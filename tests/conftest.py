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
def decoder():
    """The bundled SmolLM2-135M decoder, loaded once for every test that reads it."""
    from probes import Backbone

    return Backbone.load("smollm2")


@pytest.fixture(scope="session")
def sentiment_small():
    from probes import load_dataset

    return load_dataset("rotten_tomatoes", max_samples=400, seed=0)


@pytest.fixture(scope="session")
def screen_bank(backbone):
    """A small screen bank on MiniLM (400 train / 300 calibration requests), saved to the catalog.

    Saved under the session AUDIT_HOME, so `audit serve` and `latest_bank` find it instead of
    fitting the default bank on the full data.
    """
    from audit.screening.catalog import default_training_data, fit_default_bank

    train, calibration = default_training_data(max_train=400, max_calibration=300)
    return fit_default_bank(backbone, train=train, calibration=calibration, progress=False)
