"""Real checkpoints built once per session: an unchanged copy, a sentiment flip, a corrupt one."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from probes.bundled import minilm_folder
from tests.audit.checkpoint import checkpoints

logger = logging.getLogger(__name__)


@pytest.fixture(scope="session")
def checkpoints_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture(scope="session")
def unchanged_checkpoint(checkpoints_dir: Path) -> Path:
    """Return a byte-for-byte copy of the bundled MiniLM folder (same fingerprint)."""
    return checkpoints.copy_checkpoint(minilm_folder(), checkpoints_dir / "unchanged")


@pytest.fixture(scope="session")
def flipped_checkpoint(checkpoints_dir: Path) -> Path:
    """Return MiniLM with its last two blocks fine-tuned on flipped sentiment labels."""
    started = time.perf_counter()
    folder = checkpoints.flipped_sentiment_checkpoint(checkpoints_dir / "flipped")
    logger.info("built the flipped checkpoint in %.1f s", time.perf_counter() - started)
    return folder


@pytest.fixture(scope="session")
def corrupt_checkpoint(checkpoints_dir: Path) -> Path:
    """Return a MiniLM copy whose model.safetensors is truncated and garbled."""
    return checkpoints.corrupt_checkpoint(minilm_folder(), checkpoints_dir / "corrupt")
