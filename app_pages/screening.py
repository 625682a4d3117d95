"""Screening console: screen a typed request with a fitted bank, and the latest screen-eval report.

The console reads decisions; it never writes to the audit log (only served requests are logged).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from app_pages.common import current_backbone, friendly_errors, reports_root
from audit.screening import Screener, ScreenResult, list_banks, load_bank
from audit.screening.catalog import BankEntry, fit_default_bank
from audit.screening.evaluate import (
    headline_table,
    list_eval_reports,
    robustness_figure,
    robustness_table,
    roc_figure,
    source_figure,
    source_table,
)
from audit.screening.screener import WindowScore
from probes.backbone import Backbone

DECISION_COLOURS = {"allow": "green", "flag": "orange", "block": "red"}


@st.cache_resource(show_spinner="Loading the screen bank...")
def load_screener(_backbone: Backbone, fingerprint: str, path: str) -> Screener:
    """Return a screener over the bank saved at ``path``, loaded once per server process."""
    return Screener(_backbone, load_bank(Path(path), _backbone))


def screen_text(screener: Screener, text: str) -> tuple[ScreenResult, list[WindowScore]]:
    """Return one text's result and its windows' scores (the raw logits the table shows)."""
    (windows,) = screener.score_texts([text])
    return screener.decide(windows), windows


def screen_rows(
    screener: Screener, result: ScreenResult, windows: list[WindowScore]
) -> list[dict[str, Any]]:
    """Return one table row per screen: what it reads, its logit, probability, thresholds, decision.

    Each screen reads its highest-probability window; the primary's row carries the decision of
    the whole bank (its span rule included, when the bank has one).
    """
    bank = screener.bank
    rows = []
    for screen in bank.screens:
        name = screen.spec.name
        logits = np.array([w.logits[name] for w in windows])
        best = int(np.argmax(screen.calibrator(logits)))
        probability = result.decision.scores[name]
        primary = name == bank.primary
        rows.append(
            {
                "screen": name + (" (primary)" if primary else ""),
                "layers": ", ".join(str(layer) for layer in screen.spec.layers),
                "pooling": screen.spec.pooling,
                "logit": float(logits[best]),
                "probability": probability,
                "flag threshold": screen.flag.value,
                "block threshold": screen.block.value,
                "decision": result.action if primary else screen.decide(np.array([probability]))[0],
            }
        )
    return rows


def token_figure(result: ScreenResult) -> go.Figure:
    """Return the deciding window's top tokens as horizontal bars of their share of the logit."""
    tokens = list(reversed(result.top_tokens))  # largest at the top
    values = [v for _, v in tokens]
    fig = go.Figure(
        go.Bar(
            x=values,
            y=[f"{i}. {t}" for i, (t, _) in zip(range(len(tokens), 0, -1), tokens, strict=True)],
            orientation="h",
            marker_color=["#d62728" if v > 0 else "#1f77b4" for v in values],
        )
    )
    fig.update_layout(
        title="Tokens that drove the primary screen (share of its logit)",
        xaxis_title="contribution to the logit",
        template="plotly_white",
        height=max(240, 40 * len(tokens) + 100),
        margin={"l": 120, "r": 20, "t": 50, "b": 40},
    )
    return fig


def bank_label(entry: BankEntry) -> str:
    return (
        f"{entry.version[:12]} ({entry.created_at[:19].replace('T', ' ')} UTC, primary "
        f"{entry.primary}, {entry.n_train} train / {entry.n_calibration} calibration)"
    )


def show_result(screener: Screener, result: ScreenResult, windows: list[WindowScore]) -> None:
    action = result.action
    st.markdown(f"## Decision: :{DECISION_COLOURS[action]}[**{action.upper()}**]")
    st.caption(
        f"Primary screen {result.decision.screen} scored {result.score:.4f} (flag at "
        f"{result.decision.flag_threshold:.4f}, block at {result.decision.block_threshold:.4f}); "
        f"{result.n_tokens} tokens in {result.n_windows} window(s), window {result.window + 1} "
        "decided."
    )
    st.dataframe(screen_rows(screener, result, windows), hide_index=True)
    if result.top_tokens:
        st.plotly_chart(token_figure(result), key="top-tokens")


def console_tab(backbone: Backbone) -> None:
    entries = list_banks(backbone.fingerprint)
    if not entries:
        st.info(
            f"No screen bank is fitted for backbone {backbone.name!r} yet. Fit the default screens "
            "here (a few minutes on two CPU cores) or with `audit screen fit`; `audit serve` also "
            "fits them on its first start."
        )
        if st.button("Fit the default screens", key="fit"):
            with (
                friendly_errors("Fitting the default screens"),
                st.spinner("Fitting the default screens on the bundled requests..."),
            ):
                fit_default_bank(backbone, progress=False)
            st.rerun()  # the new bank is the newest in the catalog now
        return
    entry = st.selectbox("Screen bank", entries, format_func=bank_label, key="bank")
    with friendly_errors("Loading the screen bank"):
        screener = load_screener(backbone, backbone.fingerprint, str(entry.path))
    text = st.text_area(
        "Request", height=150, placeholder="Type or paste a request to screen", key="request"
    )
    if st.button("Screen", type="primary", key="screen"):
        with friendly_errors("Screening"):
            result, windows = screen_text(screener, text)
        show_result(screener, result, windows)


def metric_help(d: dict[str, Any]) -> str:
    if d.get("value") is None:
        return str(d.get("reason") or "not measured")
    k = d.get("n_false_positive")
    k = d.get("n_true_positive") if k is None else k
    n = d["n_benign"] if d.get("n_false_positive") is not None else d["n_harmful"]
    counts = (
        f"; {k}/{n}" if k is not None else f"; {d['n_benign']} benign, {d['n_harmful']} harmful"
    )
    return f"95% interval [{d['low']:.3f}, {d['high']:.3f}]{counts}"


def metric_value(d: dict[str, Any]) -> str:
    return "n/a" if d.get("value") is None else f"{d['value']:.3f}"


def evaluation_section(section: dict[str, Any], key: str) -> None:
    bank = section["bank"]
    st.subheader(f"{section['backbone']['name']}: bank {bank['version'][:12]}")
    primary = next(s for s in section["scorers"] if s["primary"])
    m, over = primary["metrics"], primary["overrefusal"]["blocked"]
    st.caption(f"Primary screen {primary['name']}: {primary['description']}")
    columns = st.columns(5)
    for column, (label, d) in zip(
        columns,
        (
            ("AUROC", m["auroc"]),
            ("TPR at 1% FPR", m["tpr_at_1pct_fpr"]),
            ("FPR at block", m["fpr_at_block"]),
            ("FPR at flag", m["fpr_at_flag"]),
            ("Over-refusal (blocked)", over),
        ),
        strict=True,
    ):
        column.metric(label, metric_value(d), help=metric_help(d))
    st.markdown("**Every scorer, baselines beside the screens** (value [95% interval] (counts))")
    st.dataframe(headline_table(section), hide_index=True)
    st.plotly_chart(roc_figure(section), key=f"roc-{key}")
    st.markdown("**Per source**")
    names = [s["name"] for s in section["scorers"]]
    scorer = st.selectbox("Scorer", names, key=f"scorer-{key}")
    st.dataframe(source_table(section, scorer), hide_index=True)
    st.plotly_chart(source_figure(section), key=f"sources-{key}")
    rows = robustness_table(section)
    if rows:
        st.markdown(f"**Robustness** ({section['robustness']['n_harmful']} harmful prompts)")
        st.dataframe(rows, hide_index=True)
        st.plotly_chart(robustness_figure(section), key=f"robustness-{key}")


def evaluation_tab() -> None:
    folder = reports_root()
    reports = list_eval_reports(folder)
    if not reports:
        st.info(
            f"No screen-eval report under {folder} yet. Measure the latest bank with "
            f"`audit screen-eval --out {folder}/screen-eval-<name>` (a few minutes), then reload "
            "this page."
        )
        return
    chosen = st.selectbox("Report", reports, format_func=lambda p: p.parent.name, key="report")
    with friendly_errors("Reading the report"):
        report = json.loads(Path(chosen).read_text(encoding="utf-8"))
        data = report["data"]
        st.caption(
            f"{data.get('description', data.get('kind'))}: {data['n']} requests "
            f"({data['class_counts']['harmful']} harmful, {data['class_counts']['benign']} "
            f"benign), created {report['created_at']}"
        )
        for i, section in enumerate(report["backbones"]):
            evaluation_section(section, str(i))


st.title("Screening console")
console, evaluation = st.tabs(["Console", "Evaluation"])
# The evaluation tab is drawn first: a console error stops the script, and it should not take
# the report away with it.
with evaluation:
    evaluation_tab()
with console:
    backbone = current_backbone()
    if backbone is not None:
        console_tab(backbone)
