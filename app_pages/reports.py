"""Probe reports page: the latest batch probe reports, their AUROC-by-layer plots and tables."""

import json
from pathlib import Path

import streamlit as st

from app_pages.common import reports_root
from audit.report import list_reports, report_figures

st.title("Probe reports")
folder = Path(st.text_input("Reports folder", value=str(reports_root())))
reports = list_reports(folder)
if not reports:
    st.info(
        f"No probe reports under {folder} yet. Build one with `audit probe --concept all` "
        "(or `--data your.jsonl`), then reload this page."
    )
    st.stop()
chosen = st.selectbox("Report", reports, format_func=lambda p: p.parent.name)
report = json.loads(Path(chosen).read_text())
backbone = report["backbone"]
st.caption(
    f"Backbone {backbone['name']} ({backbone['n_layers']} layers, d_model {backbone['d_model']}), "
    f"fingerprint {backbone['fingerprint']}"
)
for section, figure in report_figures(report):
    st.subheader(f"{section['dataset']} ({section['concept']})")
    st.plotly_chart(figure, key=f"fig-{section['dataset']}")
    st.dataframe(
        [
            {
                "probe": s["probe"],
                "layer": s["layer"],
                "AUROC": s["auroc"]["value"],
                "low": s["auroc"]["low"],
                "high": s["auroc"]["high"],
                "accuracy": s["accuracy"]["value"],
            }
            for s in section["scores"]
        ],
        hide_index=True,
    )
