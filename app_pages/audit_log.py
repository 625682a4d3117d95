"""Placeholder: replaced by the audit_log page."""

import streamlit as st

st.title("audit_log")
