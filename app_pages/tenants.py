"""Placeholder: replaced by the tenants page."""

import streamlit as st

st.title("tenants")
