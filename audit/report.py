"""Batch probe reports: report.json (every figure), a self-contained report.html and report.md."""

from __future__ import annotations

import html
import importlib.metadata
import json
import platform
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from audit.concept_examples import probe_examples
from audit.errors import AuditError
from probes.backbone import Backbone
from probes.robustness.scorecard import Scorecard
from probes.run import DatasetProbeResult

REPORT_SCHEMA_VERSION = 1
_PACKAGES = (
    "alignment-audit",
    "torch",
    "transformer-lens",
    "transformers",
    "scikit-learn",
    "numpy",
    "safetensors",
    "plotly",
)
_COLOURS = {"logistic": "#1f77b4", "mass_mean": "#d62728"}


def package_versions() -> dict[str, str]:
    """Return the versions of Python and the packages a report's figures depend on."""
    versions = {"python": platform.python_version()}
    for pkg in _PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    return versions


def new_run_dir(out: Path, label: str) -> Path:
    """Return a fresh, writable run folder ``out/<UTC time>-<label>``; raise if not writable."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-")[:60] or "run"
    run_dir = out / f"{stamp}-{slug}"
    suffix = 1
    while run_dir.exists():
        suffix += 1
        run_dir = out / f"{stamp}-{slug}-{suffix}"
    try:
        run_dir.mkdir(parents=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise AuditError(
            f"Cannot write the report folder {run_dir}: {exc.strerror}. "
            "Pass --out with a writable folder."
        ) from exc
    return run_dir


def build_report(
    backbone: Backbone,
    results: list[DatasetProbeResult],
    settings: dict[str, Any],
    scorecards: list[Scorecard] | None = None,
) -> dict[str, Any]:
    """Return the report as a JSON-ready dict holding every figure the HTML and markdown show."""
    datasets, sections = [], []
    for r in results:
        d = r.dataset
        datasets.append(
            {
                "name": d.name,
                "concept": d.concept,
                "source": d.source,
                "hash": d.hash,
                "n_samples": d.n_samples,
                "n_dropped": d.n_dropped,
                "label_names": list(d.label_names),
                "class_counts": d.class_counts(),
                "n_train": len(r.split.train),
                "n_test": len(r.split.test),
                "n_truncated": r.n_truncated,
                "mean_tokens": round(r.mean_tokens, 2),
                "max_tokens": r.max_tokens,
            }
        )
        sections.append(
            {
                **r.summary(),
                "pooling": r.pooling,
                "scores": [s.as_dict() for s in r.sweep.scores],
                "examples": probe_examples(r).as_dict(),
                "extraction_seconds": round(r.extraction_seconds, 3),
                "forward_passes": r.forward_passes,
                "probe_files": r.probe_files,
            }
        )
    return {
        "schema_version": REPORT_SCHEMA_VERSION,
        "kind": "probe_report",
        "created_at": datetime.now(UTC).isoformat(),
        "backbone": backbone.info(),
        "versions": package_versions(),
        "settings": settings,
        "datasets": datasets,
        "results": sections,
        "scorecards": [card.as_dict() for card in scorecards or []],
    }


def _figure(section: dict[str, Any], n_layers: int) -> go.Figure:
    fig = go.Figure()
    for kind in dict.fromkeys(s["probe"] for s in section["scores"]):
        rows = sorted(
            (s for s in section["scores"] if s["probe"] == kind), key=lambda s: s["layer"]
        )
        auc = [s["auroc"]["value"] for s in rows]
        fig.add_trace(
            go.Scatter(
                x=[s["layer"] for s in rows],
                y=auc,
                name=kind,
                mode="lines+markers",
                line={"color": _COLOURS.get(kind)},
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": [s["auroc"]["high"] - v for s, v in zip(rows, auc, strict=True)],
                    "arrayminus": [v - s["auroc"]["low"] for s, v in zip(rows, auc, strict=True)],
                },
                hovertemplate="layer %{x}<br>AUROC %{y:.3f}<extra>" + kind + "</extra>",
            )
        )
    fig.add_hline(y=0.5, line_dash="dot", line_color="grey", annotation_text="chance")
    fig.update_layout(
        title=f"{section['dataset']} ({section['concept']}): held-out AUROC by layer, 95% CI",
        xaxis={"title": "layer (resid_post)", "dtick": 1, "range": [-0.5, n_layers - 0.5]},
        yaxis={"title": "AUROC", "range": [0.4, 1.01]},
        template="plotly_white",
        height=380,
        margin={"l": 60, "r": 20, "t": 60, "b": 50},
    )
    return fig


def _score_rows(section: dict[str, Any]) -> list[list[str]]:
    rows = []
    for s in sorted(section["scores"], key=lambda s: (s["probe"], s["layer"])):
        a, c = s["auroc"], s["accuracy"]
        rows.append(
            [
                s["probe"],
                str(s["layer"]),
                f"{a['value']:.3f} [{a['low']:.3f}, {a['high']:.3f}]",
                f"{c['value']:.3f} [{c['low']:.3f}, {c['high']:.3f}]",
                f"{s['params']['C']:g}" if "C" in s["params"] else "",
            ]
        )
    return rows


_HEADER = ["probe", "layer", "AUROC [95% CI]", "accuracy [95% CI]", "C"]
_CARD_HEADER = ["check", "figure [95% CI]", "threshold", "verdict", "why"]


_EXAMPLE_HEADER = ["text", "label", "predicted", "score"]


def _example_groups(section: dict[str, Any]) -> list[tuple[str, list[list[str]]]]:
    """Return the titled example tables of a section (none for reports without examples)."""
    ex = section.get("examples")
    if not ex:
        return []
    where = f"{ex['probe']} probe at layer {ex['layer']}, held-out, score = P({ex['positive']})"
    groups = [
        ("Top-scoring examples", ex["top"]),
        ("Most misclassified examples", ex["misclassified"]),
        ("Lowest-scoring examples", ex["bottom"]),
    ]
    return [
        (
            f"{title} ({where})",
            [[e["text"], e["label"], e["predicted"], f"{e['score']:.3f}"] for e in rows],
        )
        for title, rows in groups
        if rows
    ]


def _overall(card: dict[str, Any]) -> str:
    if card["overall"] == "fragile":
        return f"fragile (failed: {', '.join(card['failed'])})"
    return str(card["overall"])


def _card_rows(card: dict[str, Any]) -> list[list[str]]:
    rows = []
    for c in card["checks"]:
        fig = c["figure"]
        if fig is None:
            figure = "-"
        elif abs(fig["high"] - fig["low"]) < 1e-12:
            figure = f"{fig['value']:.3f}"
        else:
            figure = f"{fig['value']:.3f} [{fig['low']:.3f}, {fig['high']:.3f}]"
        t = c["threshold"]
        threshold = f"{t['op']} {t['value']:g}" if t else ""
        label = f"{c['check']}: {c['figure_label']}" if c["figure_label"] else c["check"]
        rows.append([label, figure, threshold, c["verdict"], c["reason"]])
    return rows


def overall_verdict(card: dict[str, Any]) -> str:
    """Return a scorecard's overall verdict, naming the failed checks when it is fragile."""
    return _overall(card)


def scorecard_rows(card: dict[str, Any]) -> list[dict[str, str]]:
    """Return a scorecard's checks as table rows: check, figure, threshold, verdict, why."""
    return [dict(zip(_CARD_HEADER, row, strict=True)) for row in _card_rows(card)]


def render_markdown(report: dict[str, Any]) -> str:
    """Return the report as markdown: setup, datasets and every layer's scores."""
    b = report["backbone"]
    lines = [
        f"# Probe report: {', '.join(d['name'] for d in report['datasets'])}",
        "",
        f"Backbone **{b['name']}** ({b['architecture']}, {b['n_layers']} layers, d_model "
        f"{b['d_model']}), fingerprint `{b['fingerprint']}`. Created {report['created_at']}.",
        "",
        "| dataset | concept | n | train/test | truncated | hash |",
        "|---|---|---|---|---|---|",
    ]
    for d in report["datasets"]:
        counts = ", ".join(f"{k} {v}" for k, v in d["class_counts"].items())
        lines.append(
            f"| {d['name']} | {d['concept']} | {d['n_samples']} ({counts}) | "
            f"{d['n_train']}/{d['n_test']} | {d['n_truncated']} | `{d['hash'][:12]}` |"
        )
    for section in report["results"]:
        lines += ["", f"## {section['dataset']} ({section['concept']})", ""]
        for kind, best in section["best"].items():
            a = best["auroc"]
            lines.append(
                f"- best {kind}: layer {best['layer']}, AUROC {a['value']:.3f} "
                f"[{a['low']:.3f}, {a['high']:.3f}]"
            )
        lines += ["", "| " + " | ".join(_HEADER) + " |", "|" + "---|" * len(_HEADER)]
        lines += ["| " + " | ".join(row) + " |" for row in _score_rows(section)]
        for title, rows in _example_groups(section):
            lines += ["", f"{title}:", "", "| " + " | ".join(_EXAMPLE_HEADER) + " |"]
            lines += ["|" + "---|" * len(_EXAMPLE_HEADER)]
            lines += [
                "| " + " | ".join(" ".join(c.split()).replace("|", "\\|") for c in row) + " |"
                for row in rows
            ]
    for card in report.get("scorecards", []):
        lines += [
            "",
            f"## Scorecard: {card['concept']} on {card['dataset']}: **{_overall(card)}**",
            "",
        ]
        lines += ["| " + " | ".join(_CARD_HEADER) + " |", "|" + "---|" * len(_CARD_HEADER)]
        lines += ["| " + " | ".join(row) + " |" for row in _card_rows(card)]
    versions = ", ".join(f"{k} {v}" for k, v in report["versions"].items())
    lines += ["", f"Versions: {versions}.", ""]
    return "\n".join(lines)


def render_html(report: dict[str, Any]) -> str:
    """Return the report as one self-contained HTML page (plotly inlined, no network needed)."""
    b = report["backbone"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Probe report: {html.escape(b['name'])}</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;"
        "color:#222}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:3px 8px;font-size:14px}th{background:#f3f3f3}code{background:#f6f6f6}"
        "tr.fail td{background:#fde8e8}tr.pass td{background:#eaf7ea}tr.skipped td{color:#888}"
        ".verdict-robust{color:#1a7f37}.verdict-fragile{color:#b35900}.verdict-absent{color:#b00}"
        "</style>",
        f"<script>{get_plotlyjs()}</script></head><body>",
        f"<h1>Probe report</h1><p>Backbone <b>{html.escape(b['name'])}</b> "
        f"({html.escape(b['architecture'])}, {b['n_layers']} layers, d_model {b['d_model']}), "
        f"fingerprint <code>{b['fingerprint']}</code>. Created {report['created_at']}.</p>",
        "<table><tr><th>dataset</th><th>concept</th><th>n</th><th>train/test</th>"
        "<th>truncated</th><th>source</th></tr>",
    ]
    for d in report["datasets"]:
        counts = ", ".join(f"{k} {v}" for k, v in d["class_counts"].items())
        parts.append(
            f"<tr><td>{html.escape(d['name'])}</td><td>{html.escape(d['concept'])}</td>"
            f"<td>{d['n_samples']} ({html.escape(counts)})</td><td>{d['n_train']}/{d['n_test']}"
            f"</td><td>{d['n_truncated']}</td><td><small>{html.escape(d['source'])}</small></td></tr>"
        )
    parts.append("</table>")
    for section in report["results"]:
        parts.append(
            f"<h2>{html.escape(section['dataset'])} ({html.escape(section['concept'])})</h2>"
        )
        fig = _figure(section, b["n_layers"])
        parts.append(fig.to_html(full_html=False, include_plotlyjs=False))
        parts.append("<table><tr>" + "".join(f"<th>{h}</th>" for h in _HEADER) + "</tr>")
        for row in _score_rows(section):
            parts.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
        parts.append("</table>")
        for title, rows in _example_groups(section):
            parts.append(f"<h3>{html.escape(title)}</h3><table><tr>")
            parts.append("".join(f"<th>{html.escape(h)}</th>" for h in _EXAMPLE_HEADER) + "</tr>")
            for row in rows:
                parts.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
            parts.append("</table>")
    for card in report.get("scorecards", []):
        parts.append(
            f"<h2>Scorecard: {html.escape(card['concept'])} on {html.escape(card['dataset'])}: "
            f"<span class='verdict-{card['overall']}'>{html.escape(_overall(card))}</span></h2>"
        )
        parts.append("<table><tr>" + "".join(f"<th>{h}</th>" for h in _CARD_HEADER) + "</tr>")
        for row in _card_rows(card):
            parts.append(
                f"<tr class='{row[3]}'>"
                + "".join(f"<td>{html.escape(c)}</td>" for c in row)
                + "</tr>"
            )
        parts.append("</table>")
        for fig in scorecard_figures(card):
            parts.append(fig.to_html(full_html=False, include_plotlyjs=False))
    versions = ", ".join(f"{k} {v}" for k, v in report["versions"].items())
    parts.append(f"<p><small>Versions: {html.escape(versions)}</small></p></body></html>")
    return "\n".join(parts)


def scorecard_figures(card: dict[str, Any]) -> list[go.Figure]:
    """Return the plots a scorecard's details support (transfer, calibration, geometry)."""
    from audit.scorecard_plots import figures_for_card

    return figures_for_card(card, card.get("label_names"))


def is_probe_report(report: object) -> bool:
    """Return whether a parsed report.json is a probe report (not screen-eval, not an audit)."""
    return (
        isinstance(report, dict)
        and isinstance(report.get("backbone"), dict)
        and isinstance(report.get("results"), list)
        and isinstance(report.get("datasets"), list)
    )


def list_reports(folder: Path) -> list[Path]:
    """Return the report.json files of probe reports under ``folder``, newest first.

    Other reports sharing the folder (screen-eval, checkpoint audits) and unreadable files are
    passed over.
    """
    if not folder.is_dir():
        return []
    found = []
    for path in folder.glob("*/report.json"):
        try:
            if is_probe_report(json.loads(path.read_text(encoding="utf-8"))):
                found.append(path)
        except (OSError, ValueError):
            continue
    return sorted(found, key=lambda p: p.parent.name, reverse=True)


def find_report(
    folder: Path,
    fingerprint: str,
    *,
    concept: str | None = None,
    dataset_hash: str | None = None,
) -> Path | None:
    """Return the newest report.json under ``folder`` made on ``fingerprint`` that covers a concept.

    A report covers a bundled ``concept`` when one of its datasets is of that concept, and a user
    dataset when one of its datasets has ``dataset_hash``. Unreadable reports are passed over.
    """
    for path in list_reports(folder):
        try:
            report = json.loads(path.read_text())
            if report["backbone"]["fingerprint"] != fingerprint:
                continue
            datasets = report["datasets"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        for d in datasets:
            if (concept is not None and d.get("concept") == concept) or (
                dataset_hash is not None and d.get("hash") == dataset_hash
            ):
                return path
    return None


def report_figures(report: dict[str, Any]) -> list[tuple[dict[str, Any], go.Figure]]:
    """Return each result section of a report with its AUROC-by-layer figure."""
    n_layers = report["backbone"]["n_layers"]
    return [(section, _figure(section, n_layers)) for section in report["results"]]


def write_report(report: dict[str, Any], run_dir: Path) -> dict[str, Path]:
    """Write report.json, report.html and report.md into ``run_dir``; return their paths."""
    paths = {
        "json": run_dir / "report.json",
        "html": run_dir / "report.html",
        "md": run_dir / "report.md",
    }
    try:
        paths["json"].write_text(json.dumps(report, indent=1))
        paths["html"].write_text(render_html(report))
        paths["md"].write_text(render_markdown(report))
    except OSError as exc:
        raise AuditError(f"Cannot write the report into {run_dir}: {exc.strerror}.") from exc
    return paths
