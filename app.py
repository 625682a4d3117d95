"""Streamlit entry point of the workbench: page config and navigation only."""

import streamlit as st

st.set_page_config(page_title="Alignment audit workbench", layout="wide")
st.navigation([st.Page("app_pages/reports.py", title="Probe reports", default=True)]).run()
