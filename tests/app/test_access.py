"""Access: open on localhost; on any other address the owner's admin key comes first."""

from __future__ import annotations

import pytest
from streamlit import config as st_config
from streamlit.testing.v1 import AppTest

from tests.app.conftest import APP


@pytest.fixture
def served_on_all_interfaces():
    before = st_config.get_option("server.address")
    st_config.set_option("server.address", "0.0.0.0")
    yield
    st_config.set_option("server.address", before)


def _run() -> AppTest:
    return AppTest.from_file(str(APP), default_timeout=120).run()


def test_localhost_is_open(reports_dir) -> None:
    app = _run()
    assert not app.exception
    assert app.title[0].value == "Backbone"


def test_other_address_without_admin_key_serves_nothing(
    reports_dir, served_on_all_interfaces, monkeypatch
) -> None:
    monkeypatch.delenv("AUDIT_ADMIN_KEY", raising=False)
    app = _run()
    assert not app.exception
    assert "AUDIT_ADMIN_KEY" in app.error[0].value
    assert not app.title  # no page rendered


def test_other_address_asks_for_the_admin_key(
    reports_dir, served_on_all_interfaces, monkeypatch
) -> None:
    monkeypatch.setenv("AUDIT_ADMIN_KEY", "owner-secret-key")
    app = _run()
    assert [t.value for t in app.title] == ["Owner sign-in"]
    app.text_input[0].input("wrong-key")
    app.button[0].click().run()
    assert "not the admin key" in app.error[0].value
    assert [t.value for t in app.title] == ["Owner sign-in"]
    app.text_input[0].input("owner-secret-key")
    app.button[0].click().run()
    assert not app.exception
    assert [t.value for t in app.title] == ["Backbone"]


def test_the_app_reads_the_same_admin_key_as_the_api() -> None:
    from app_pages.common import ADMIN_KEY_ENV
    from audit.api.app import ADMIN_KEY_ENV as API_KEY_ENV

    assert ADMIN_KEY_ENV == API_KEY_ENV
