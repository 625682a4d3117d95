"""The bar chart of a head's concept reliance: one bar per concept, the random control beside them."""

from __future__ import annotations

import plotly.graph_objects as go

from audit.tenants.reliance import CONTROL, RelianceReport, RelianceScore

CONCEPT_COLOUR = "#1f77b4"
CONTROL_COLOUR = "#9e9e9e"


def _hover(score: RelianceScore) -> str:
    parts = [f"mean |change| {score.mean_abs_change:.3f}"]
    if score.fraction_flipped is not None:
        parts.append(f"flipped {score.fraction_flipped:.1%}")
    if score.weight_cosine is not None:
        parts.append(f"|cos| with probe {score.weight_cosine:.2f}")
    if score.probe_auroc is not None:
        parts.append(f"probe AUROC {score.probe_auroc:.2f}")
    return "<br>".join(parts)


def reliance_figure(report: RelianceReport) -> go.Figure:
    """Return the report's scores as bars, the control's bar grey and its level a dotted line.

    The report carries one score per concept and the mean of its random controls, with no
    interval: a concept bar well above the control line is reliance the head did not get by
    chance of direction.
    """
    rows = [*report.concepts, report.control]
    names = [s.name for s in rows]
    fig = go.Figure(
        go.Bar(
            x=names,
            y=[s.score for s in rows],
            marker_color=[CONTROL_COLOUR if s.name == CONTROL else CONCEPT_COLOUR for s in rows],
            text=[f"{s.score:.2f}" for s in rows],
            textposition="outside",
            customdata=[_hover(s) for s in rows],
            hovertemplate="%{x}: score %{y:.3f}<br>%{customdata}<extra></extra>",
        )
    )
    fig.add_hline(
        y=report.control.score,
        line_dash="dot",
        line_color=CONTROL_COLOUR,
        annotation_text=f"{CONTROL} (mean of {report.n_controls})",
    )
    fig.update_layout(
        title=(
            f"Head {report.head_id} ({report.kind}, {report.input_hook}): reliance by concept, "
            f"{report.method} erasure on {report.n_texts} texts"
        ),
        xaxis={"title": "concept erased"},
        yaxis={"title": "share of output variance moved", "range": [0, 1.05]},
        template="plotly_white",
        height=380,
        showlegend=False,
        margin={"l": 60, "r": 20, "t": 60, "b": 50},
    )
    return fig
