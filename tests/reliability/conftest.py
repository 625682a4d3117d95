"""Fixtures of the reliability tests: one provisioned many-tenant home, copied per test.

Both fixtures are lazy: nothing is built unless a test asks for ``fleet`` or ``fleet_home``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.fleet import Fleet, build_fleet


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory, screen_bank, audit_home: Path) -> Fleet:
    """A stopped home with 24 tenants, each with a trained linear head, served once to build.

    The screen bank is the session's small one (``screen_bank``, saved in the session catalog),
    copied into the fleet's catalog, so no server ever fits a bank.
    """
    del screen_bank  # requested for its side effect: the bank is in audit_home's catalog
    return build_fleet(tmp_path_factory.mktemp("fleet") / "home", audit_home)


@pytest.fixture
def fleet_home(fleet: Fleet, tmp_path: Path) -> Path:
    """A private copy of the fleet's home for one test's server."""
    return fleet.copy(tmp_path / "home")
