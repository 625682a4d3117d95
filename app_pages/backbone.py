"""Placeholder: replaced by the backbone page."""

import streamlit as st

st.title("backbone")
