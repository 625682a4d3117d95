"""Placeholder: replaced by the concepts page."""

import streamlit as st

st.title("concepts")
