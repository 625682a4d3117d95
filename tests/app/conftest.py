"""Fixtures for the workbench app: AppTest on app.py with a page switched to, reports in tmp."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "app.py"


@pytest.fixture
def reports_dir(tmp_path, monkeypatch) -> Path:
    """Return an empty reports folder the app reads (AUDIT_REPORTS points at it)."""
    folder = tmp_path / "reports"
    folder.mkdir()
    monkeypatch.setenv("AUDIT_REPORTS", str(folder))
    return folder


@pytest.fixture
def open_page(reports_dir) -> Callable[[str], AppTest]:
    """Return a function that runs app.py, switches to ``app_pages/<name>.py`` and returns the AppTest."""

    def run(name: str, timeout: float = 120) -> AppTest:
        app = AppTest.from_file(str(APP), default_timeout=timeout)
        app.run()
        assert not app.exception, app.exception
        app.switch_page(f"app_pages/{name}.py")
        app.run()
        return app

    return run
