"""Streamlit entry point of the workbench: page config, the access check and navigation only."""

import streamlit as st

from app_pages.common import access_granted

st.set_page_config(page_title="Alignment audit workbench", layout="wide")
if not access_granted():
    st.stop()
st.navigation(
    [
        st.Page("app_pages/backbone.py", title="Backbone", default=True),
        st.Page("app_pages/concepts.py", title="Concepts"),
        st.Page("app_pages/screening.py", title="Screening console"),
        st.Page("app_pages/audit_log.py", title="Audit log"),
        st.Page("app_pages/tenants.py", title="Tenants"),
        st.Page("app_pages/checkpoints.py", title="Checkpoints"),
        st.Page("app_pages/reports.py", title="Probe reports"),
    ]
).run()
