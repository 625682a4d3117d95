"""The concepts page: empty state, reports built from the browser and shown, bad uploads."""

from __future__ import annotations

import html
import json

import pytest

from probes import load_dataset

# Quick runs: small stratified samples, one cheap check each, few bootstrap resamples. 120 texts
# is about the least at which MiniLM's sentiment clears presence and both datasets hold the 20
# examples per class that transfer needs.
SENTIMENT_SAMPLES = 120
UPLOAD_SAMPLES = 80
N_BOOT = 100


def build_button(app):
    return next(b for b in app.button if b.label.startswith("Build"))


def plain(text: str) -> str:
    """Return text with whitespace collapsed (hover labels are wrapped)."""
    return " ".join(text.split())


def configure(app, checks: list[str], n_samples: int | None = None):
    if n_samples is not None:
        app.number_input[0].set_value(n_samples)
    app.number_input[1].set_value(N_BOOT)
    app.multiselect[0].set_value(checks)
    return app


def test_empty_state_explains_and_offers_a_build(open_page, reports_dir) -> None:
    app = open_page("concepts")
    assert not app.exception, app.exception
    assert app.title[0].value == "Concepts"
    assert "No probe report" in app.info[0].value and "sentiment" in app.info[0].value
    assert build_button(app).label == "Build the probe report"
    assert not app.get("plotly_chart")
    assert not any(reports_dir.iterdir())


def test_build_writes_a_report_and_shows_it(open_page, reports_dir) -> None:
    app = open_page("concepts")
    app.selectbox[0].select("sentiment")
    configure(app, ["transfer"], SENTIMENT_SAMPLES)
    build_button(app).click().run()
    assert not app.exception, app.exception
    assert not app.error, [e.value for e in app.error]
    written = list(reports_dir.glob("*/report.json"))
    assert len(written) == 1
    report = json.loads(written[0].read_text())
    assert [d["name"] for d in report["datasets"]] == ["rotten_tomatoes", "tweets"]
    assert [d["n_samples"] for d in report["datasets"]] == [SENTIMENT_SAMPLES] * 2
    assert report["settings"]["checks"] == ["transfer"]

    card = report["scorecards"][0]
    assert card["overall"] in ("robust", "fragile")  # present, so the checks ran
    assert app.subheader[0].value.startswith(f"sentiment on rotten_tomatoes: {card['overall']}")
    verdicts = app.dataframe[0].value
    assert list(verdicts["check"].str.split(":").str[0]) == ["presence", "transfer"]
    assert list(verdicts["verdict"]) == [c["verdict"] for c in card["checks"]]
    charts = [json.loads(c.proto.spec) for c in app.get("plotly_chart")]
    assert [c["data"][0]["type"] for c in charts] == ["scatter", "scatter", "heatmap"]
    assert charts[2]["data"][0]["x"] == ["rotten_tomatoes", "tweets"]

    texts = set(load_dataset("rotten_tomatoes").texts) | set(load_dataset("tweets").texts)
    tables = app.dataframe[1:]
    assert len(tables) == 6  # top, misclassified and lowest for each dataset
    shown = [text for table in tables for text in table.value["text"]]
    assert len(shown) >= 4 * 10 and all(text in texts for text in shown)
    top = report["results"][0]["examples"]["top"]
    assert list(tables[0].value["text"]) == [e["text"] for e in top]

    again = app.run()  # a rerun reads the written report instead of building again
    assert not again.exception
    assert len(list(reports_dir.glob("*/report.json"))) == 1
    assert build_button(again).label == "Build a new probe report"


def test_uploaded_jsonl_is_probed_and_its_umap_hovers_show_texts(
    open_page, reports_dir, tmp_path
) -> None:
    sample = load_dataset("tweets", max_samples=UPLOAD_SAMPLES, seed=1)
    lines = [
        json.dumps({"text": t, "label": sample.label_names[y]})
        for t, y in zip(sample.texts, sample.labels.tolist(), strict=True)
    ]
    app = open_page("concepts")
    app.selectbox[0].select("Your own JSONL file").run()
    assert "Upload a JSONL" in app.info[0].value
    app.file_uploader[0].set_value(("my-tweets.jsonl", "\n".join(lines).encode(), "text/plain"))
    app.run()
    assert "No probe report" in app.info[0].value
    configure(app, ["geometry"])
    build_button(app).click().run()
    assert not app.exception, app.exception
    assert not app.error, [e.value for e in app.error]
    report = json.loads(next(reports_dir.glob("*/report.json")).read_text())
    assert report["datasets"][0]["source"] == "upload:my-tweets.jsonl"
    assert report["datasets"][0]["hash"] == sample.hash

    umap = json.loads(app.get("plotly_chart")[-1].proto.spec)
    hovers = [
        html.unescape(text.replace("<br>", " "))
        for t in umap["data"]
        for _, text in t["customdata"]
    ]
    assert len(hovers) == UPLOAD_SAMPLES
    assert {plain(h) for h in hovers} == {plain(t) for t in sample.texts}
    shown = [text for table in app.dataframe[1:] for text in table.value["text"]]
    assert shown and all(text in sample.texts for text in shown)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"text": "fine", "label": "positive"}\nnot json\n', "line 2"),
        (b'{"text": "fine", "label": "positive"}\n{"text": "also fine"}\n', "line 2"),
        (b'{"text": "fine", "label": "positive"}\n', "two classes"),
    ],
)
def test_bad_upload_shows_error_naming_the_line(open_page, content: bytes, message: str) -> None:
    app = open_page("concepts")
    app.selectbox[0].select("Your own JSONL file").run()
    app.file_uploader[0].set_value(("mine.jsonl", content, "application/json")).run()
    assert not app.exception, app.exception
    assert len(app.error) == 1
    assert "mine.jsonl" in app.error[0].value and message in app.error[0].value
    assert "audit-upload-" not in app.error[0].value
    assert not app.button
