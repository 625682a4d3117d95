"""Concepts page: one concept's probe report on the session's backbone, built here if missing.

Everything shown comes from a report.json that `audit probe` (or the build button, which runs the
same pipeline) wrote under the reports folder: AUROC by layer, the robustness scorecard and its
plots, and the best probe's held-out examples.
"""

import json
from pathlib import Path
from typing import Any

import streamlit as st

from app_pages.common import current_backbone, friendly_errors, reports_root
from audit.probe_run import (
    ProbeSettings,
    discard_if_empty,
    read_jsonl_upload,
    report_label,
    run_probe_report,
    select_datasets,
)
from audit.report import (
    find_report,
    new_run_dir,
    overall_verdict,
    report_figures,
    scorecard_figures,
    scorecard_rows,
)
from probes.backbone import Backbone
from probes.datasets import CONCEPTS, ConceptDataset
from probes.robustness.scorecard import CHECK_MODULES

UPLOAD = "Your own JSONL file"
DEFAULT_SAMPLES = 500


@st.cache_data(show_spinner=False, max_entries=32)
def read_report(path: str, mtime_ns: int) -> dict[str, Any]:
    """Return a report.json, parsed once per file version (``mtime_ns`` keys the cache)."""
    return json.loads(Path(path).read_text())


def build(backbone: Backbone, datasets: list[ConceptDataset], settings: ProbeSettings) -> Path:
    """Return the report.json of a new probe report of ``datasets``, following it on a bar."""
    bar = st.progress(0.0, text="Starting")
    with friendly_errors("Building the probe report"):
        run_dir = new_run_dir(reports_root(), report_label(datasets))
        with discard_if_empty(run_dir):
            run = run_probe_report(
                backbone,
                datasets,
                run_dir,
                settings,
                progress=False,
                on_step=lambda done, message: bar.progress(min(done, 1.0), text=message),
            )
    bar.empty()
    st.success(f"Report written to {run.run_dir}")
    return run.paths["json"]


def example_table(rows: list[dict[str, Any]], positive: str) -> None:
    """Show examples as a table of text, label, prediction and score."""
    st.dataframe(
        [
            {
                "text": r["text"],
                "label": r["label"],
                "predicted": r["predicted"],
                f"P({positive})": r["score"],
                "row": r["row"],
            }
            for r in rows
        ],
        hide_index=True,
        column_config={"text": st.column_config.TextColumn(width="large")},
    )


st.title("Concepts")
backbone = current_backbone()
if backbone is None:
    st.stop()
root = reports_root()
st.caption(
    f"Backbone {backbone.name}, fingerprint {backbone.fingerprint}. "
    f"Probe reports are read from and written to {root}."
)

choice = st.selectbox(
    "Concept",
    [*CONCEPTS, UPLOAD],
    format_func=lambda c: c if c == UPLOAD else f"{c} ({', '.join(CONCEPTS[c])})",
)
uploaded: ConceptDataset | None = None
if choice == UPLOAD:
    upload = st.file_uploader(
        'JSONL of {"text": ..., "label": ...} lines with two label values',
        type=["jsonl", "json", "txt"],
    )
    if upload is None:
        st.info(
            "Upload a JSONL file (one JSON object per line with a text and a label; the same "
            "format `audit probe --data` reads) to probe your own concept."
        )
        st.stop()
    with friendly_errors(f"Reading {upload.name}"):
        uploaded = read_jsonl_upload(upload.name, upload.getvalue())
    counts = ", ".join(f"{k} {v}" for k, v in uploaded.class_counts().items())
    st.caption(f"{uploaded.name}: {uploaded.n_samples} texts ({counts}).")
    found = find_report(root, backbone.fingerprint, dataset_hash=uploaded.hash)
    what = f"{uploaded.name} (this exact file)"
else:
    found = find_report(root, backbone.fingerprint, concept=choice)
    what = f"the concept {choice}"

if found is None:
    st.info(
        f"No probe report under {root} covers {what} on {backbone.name} yet. Build one here: it "
        "runs the pipeline `audit probe` runs (layer sweep, robustness scorecard) and writes "
        "the report folder. A small sample gives a quick first look."
    )
    controls = st.container()
else:
    controls = st.expander("Build a new report for this concept")
with controls:
    left, right = st.columns(2)
    n_samples = left.number_input(
        "Texts per bundled dataset (stratified sample)",
        min_value=20,
        max_value=20_000,
        value=DEFAULT_SAMPLES,
        step=50,
        disabled=uploaded is not None,
        help="Uploaded files are probed whole, as `audit probe --data` does.",
    )
    n_boot = right.number_input(
        "Bootstrap resamples for the 95% intervals",
        min_value=100,
        max_value=10_000,
        value=1000,
        step=100,
    )
    checks = st.multiselect(
        "Scorecard checks",
        list(CHECK_MODULES),
        default=list(CHECK_MODULES),
        help="Presence is always judged. Fewer checks make a faster run; none skips the scorecard.",
    )
    clicked = st.button(
        "Build the probe report" if found is None else "Build a new probe report", type="primary"
    )
if clicked:
    settings = ProbeSettings(
        max_samples=0 if uploaded is not None else int(n_samples),
        n_boot=int(n_boot),
        scorecard=bool(checks),
        checks=tuple(checks) or None,
    )
    with friendly_errors("Loading the concept's datasets"):
        datasets = (
            [uploaded]
            if uploaded is not None
            else select_datasets([choice], max_samples=int(n_samples))
        )
    found = build(backbone, datasets, settings)
if found is None:
    st.stop()

with friendly_errors(f"Reading {found}"):
    report = read_report(str(found), found.stat().st_mtime_ns)
if uploaded is not None:
    names = {d["name"] for d in report["datasets"] if d["hash"] == uploaded.hash}
else:
    names = {d["name"] for d in report["datasets"] if d["concept"] == choice}
settings = report["settings"]
sizes = ", ".join(f"{d['name']} {d['n_samples']}" for d in report["datasets"] if d["name"] in names)
st.caption(
    f"Report {found.parent.name}, created {report['created_at'][:19]} UTC: {sizes} texts, "
    f"{settings['pooling']} pooling, {settings['n_boot']} bootstrap resamples."
)

card = next((c for c in report.get("scorecards", []) if c["dataset"] in names), None)
st.header("Robustness scorecard")
if card is None:
    st.info("This report has no scorecard: build a new report with at least one check.")
else:
    st.subheader(f"{card['concept']} on {card['dataset']}: {overall_verdict(card)}")
    st.dataframe(scorecard_rows(card), hide_index=True)

st.header("AUROC by layer")
sections = [(s, fig) for s, fig in report_figures(report) if s["dataset"] in names]
for section, figure in sections:
    st.plotly_chart(figure, key=f"auroc-{section['dataset']}")

if card is not None:
    figures = scorecard_figures(card)
    if figures:
        st.header("Transfer, calibration and geometry")
        st.caption("Hover a point of the UMAP to read its text.")
        for i, figure in enumerate(figures):
            st.plotly_chart(figure, key=f"card-{i}")

st.header("Examples of the best probe")
for section, _ in sections:
    examples = section.get("examples")
    if not examples:
        st.info(f"{section['dataset']}: this report predates stored examples; build a new one.")
        continue
    st.subheader(
        f"{section['dataset']}: {examples['probe']} probe at layer {examples['layer']}, "
        "held-out texts"
    )
    top, wrong, bottom = st.tabs(["Top-scoring", "Most misclassified", "Lowest-scoring"])
    with top:
        example_table(examples["top"], examples["positive"])
    with wrong:
        if examples["misclassified"]:
            example_table(examples["misclassified"], examples["positive"])
        else:
            st.caption("The probe classifies every held-out text correctly.")
    with bottom:
        example_table(examples["bottom"], examples["positive"])
