"""Plots of scorecard details: transfer heatmap, reliability diagram, UMAP of activations."""

from __future__ import annotations

import html
import textwrap
from typing import Any

import plotly.graph_objects as go

_LAYOUT = {
    "template": "plotly_white",
    "height": 380,
    "margin": {"l": 60, "r": 20, "t": 60, "b": 50},
}


def _transfer(card: dict[str, Any], check: dict[str, Any]) -> go.Figure:
    details = check["details"]
    names = details["datasets"]
    values = [[cell["value"] for cell in row] for row in details["matrix"]]
    text = [
        [f"{c['value']:.3f}<br>[{c['low']:.3f}, {c['high']:.3f}]" for c in row]
        for row in details["matrix"]
    ]
    fig = go.Figure(
        go.Heatmap(
            z=values,
            x=names,
            y=names,
            text=text,
            texttemplate="%{text}",
            zmin=0.5,
            zmax=1.0,
            colorscale="Blues",
            colorbar={"title": "AUROC"},
        )
    )
    fig.update_layout(
        title=f"{card['concept']}: transfer AUROC (row: fitted on, column: scored on)",
        xaxis={"title": "scored on"},
        yaxis={"title": "fitted on", "autorange": "reversed"},
        **_LAYOUT,
    )
    return fig


def _reliability(card: dict[str, Any], check: dict[str, Any]) -> go.Figure:
    bins = [b for b in check["details"]["reliability"] if b["count"]]
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=[0, 1], y=[0, 1], mode="lines", name="perfect", line={"dash": "dot", "color": "grey"}
        )
    )
    fig.add_trace(
        go.Scatter(
            x=[b["mean_predicted"] for b in bins],
            y=[b["observed"] for b in bins],
            mode="lines+markers",
            name="probe",
            marker={"size": [6 + 20 * b["count"] / max(x["count"] for x in bins) for b in bins]},
            hovertemplate="predicted %{x:.2f}<br>observed %{y:.2f}<extra></extra>",
        )
    )
    fig.update_layout(
        title=f"{card['concept']}: reliability of probe probabilities (marker size = count)",
        xaxis={"title": "mean predicted probability", "range": [0, 1]},
        yaxis={"title": "observed frequency", "range": [0, 1]},
        **_LAYOUT,
    )
    return fig


def _hover_text(text: str) -> str:
    """Return a text escaped for a plotly hover label and wrapped to a readable width."""
    return "<br>".join(html.escape(line) for line in textwrap.wrap(text, 60)) or "&nbsp;"


def _geometry(card: dict[str, Any], check: dict[str, Any], label_names: list[str]) -> go.Figure:
    d = check["details"]
    texts = d.get("text")  # reports written before the texts were stored have row numbers only
    fig = go.Figure()
    for value in sorted(set(d["label"])):
        rows = [i for i, lab in enumerate(d["label"]) if lab == value]
        name = label_names[value] if value < len(label_names) else str(value)
        fig.add_trace(
            go.Scattergl(
                x=[d["x"][i] for i in rows],
                y=[d["y"][i] for i in rows],
                mode="markers",
                name=name,
                marker={"size": 4, "opacity": 0.7},
                customdata=[[d["index"][i], _hover_text(texts[i]) if texts else ""] for i in rows],
                hovertemplate="row %{customdata[0]}<br>%{customdata[1]}<extra>"
                + html.escape(name)
                + "</extra>",
            )
        )
    fig.update_layout(
        title=f"{card['dataset']}: UMAP of layer {d['layer']} activations by label",
        **_LAYOUT,
    )
    return fig


def figures_for_card(card: dict[str, Any], label_names: list[str] | None = None) -> list[go.Figure]:
    """Return a figure for each check whose details can be drawn."""
    figures = []
    for check in card["checks"]:
        if check["verdict"] == "skipped":
            continue
        if check["check"] == "transfer":
            figures.append(_transfer(card, check))
        elif check["check"] == "calibration":
            figures.append(_reliability(card, check))
        elif check["check"] == "geometry":
            figures.append(_geometry(card, check, label_names or ["0", "1"]))
    return figures
