"""What every workbench page shares: the cached backbone, access control, folders, error display.

Pages read the stores and reports through the library; nothing here computes a figure. The
library (torch, the bridge) is imported on first use, so app.py's access check and a page's
title paint before it has loaded.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st

if TYPE_CHECKING:
    from probes.backbone import Backbone

ADMIN_KEY_ENV = "AUDIT_ADMIN_KEY"  # the owner's key, as the HTTP API reads it (audit.api.app)
LOCAL_ADDRESSES = frozenset({"localhost", "127.0.0.1", "::1"})
REPORTS_ENV = "AUDIT_REPORTS"
BACKBONE_KEY = "backbone_spec"  # st.session_state key: the backbone every page works on


def reports_root() -> Path:
    """Return the folder the app reads and writes reports in (``AUDIT_REPORTS``, else ./reports)."""
    return Path(os.environ.get(REPORTS_ENV, "reports"))


def bundled_aliases() -> list[str]:
    """Return the bundled backbone aliases, the default first."""
    from probes.bundled import BUNDLED, DEFAULT_BACKBONE

    return [DEFAULT_BACKBONE, *(a for a in BUNDLED if a != DEFAULT_BACKBONE)]


@st.cache_resource(show_spinner="Loading the backbone...")
def load_backbone(spec: str) -> Backbone:
    """Return the frozen backbone named by ``spec``, loaded once per server process."""
    from probes.backbone import Backbone

    return Backbone.load(spec)


def backbone_spec() -> str:
    """Return the backbone this session works on (the embedded default until the user switches)."""
    from probes.bundled import DEFAULT_BACKBONE

    return str(st.session_state.get(BACKBONE_KEY, DEFAULT_BACKBONE))


def _library_errors() -> tuple[type[Exception], ...]:
    from audit.errors import AuditError
    from probes.errors import ProbesError

    return (AuditError, ProbesError, OSError, ValueError, LookupError)


def current_backbone() -> Backbone | None:
    """Return this session's backbone, or None after showing why it could not be loaded."""
    spec = backbone_spec()
    try:
        return load_backbone(spec)
    except _library_errors() as exc:
        st.error(f"Could not load backbone {spec!r}: {exc}")
        return None


@contextmanager
def friendly_errors(doing: str) -> Iterator[None]:
    """Show a library error as one ``st.error`` line naming what failed, never a traceback."""
    try:
        yield
    except _library_errors() as exc:
        st.error(f"{doing} failed: {exc}")
        st.stop()


def served_address() -> str:
    """Return the address this Streamlit server binds to ('' means every interface)."""
    return str(st.get_option("server.address") or "")


def access_granted() -> bool:
    """Return whether this browser session may use the workbench, asking for the admin key if needed.

    On localhost the app is open. Served on any other address, the owner's admin key
    (``AUDIT_ADMIN_KEY``) must be typed first; without one configured, nothing is served.
    """
    address = served_address()
    if address in LOCAL_ADDRESSES or st.session_state.get("access_granted"):
        return True
    expected = os.environ.get(ADMIN_KEY_ENV)
    shown = address or "every interface"
    if not expected:
        st.error(
            f"The workbench is served on {shown}, not localhost, and no admin key is configured. "
            f"Set {ADMIN_KEY_ENV} before starting it, or serve on localhost "
            "(streamlit run app.py --server.address localhost)."
        )
        return False
    st.title("Owner sign-in")
    st.caption(f"The workbench is served on {shown}: enter the owner's admin key.")
    with st.form("admin-key"):
        key = st.text_input("Admin key", type="password")
        submitted = st.form_submit_button("Sign in")
    if submitted:
        if hmac.compare_digest(key.encode(), expected.encode()):
            st.session_state["access_granted"] = True
            st.rerun()
        st.error("That is not the admin key.")
    return False
