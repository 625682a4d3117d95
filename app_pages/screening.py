"""Placeholder: replaced by the screening page."""

import streamlit as st

st.title("screening")
