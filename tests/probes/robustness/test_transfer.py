"""Cross-dataset transfer: Rotten Tomatoes <-> tweets, user files, and the one-dataset skip."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from probes import InvalidInputError, load_dataset
from probes.robustness import THRESHOLDS, CheckContext
from probes.robustness import transfer as check

SENTIMENT = ("negative", "positive")


def _write_jsonl(path: Path, rows: list[tuple[str, object]]) -> Path:
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    return path


def test_rotten_tomatoes_and_tweets_transfer_above_chance(real_context: CheckContext) -> None:
    tweets = load_dataset("tweets", max_samples=300, seed=0)
    result = check.run(replace(real_context, others=[tweets]), THRESHOLDS)
    assert result.verdict in ("pass", "fail")
    details = result.details
    assert details["datasets"] == ["rotten_tomatoes", "tweets"]
    matrix = details["matrix"]
    assert len(matrix) == 2 and all(len(row) == 2 for row in matrix)
    for row in matrix:
        for cell in row:
            assert all(math.isfinite(cell[k]) for k in ("value", "low", "high"))
            assert cell["low"] <= cell["value"] <= cell["high"]
    # The diagonal is in-domain held-out AUROC: for the primary dataset, the sweep's own figure.
    assert matrix[0][0]["value"] == pytest.approx(real_context.sweep.best("logistic").auroc.value)
    assert matrix[1][1]["value"] > 0.8
    # Sentiment carries over between reviews and tweets, if less well than in-domain.
    assert result.figure is not None
    assert result.figure.value == min(matrix[0][1]["value"], matrix[1][0]["value"])
    assert 0.55 < result.figure.value < min(matrix[0][0]["value"], matrix[1][1]["value"])
    assert result.forward_seconds > 0 and result.fit_seconds > 0


def test_one_dataset_is_skipped_with_the_reason(real_context: CheckContext) -> None:
    result = check.run(replace(real_context, others=[]), THRESHOLDS)
    assert result.verdict == "skipped"
    assert result.reason.startswith("only one dataset of this concept; give --transfer FILE.jsonl")
    assert result.figure is None


def test_too_small_transfer_file_is_skipped_with_the_number_needed(
    real_context: CheckContext, tmp_path: Path
) -> None:
    rows = [(f"a fine day number {i}", "pos") for i in range(5)]
    rows += [(f"a bad day number {i}", "neg") for i in range(5)]
    small = check.attach_transfer_file(SENTIMENT, _write_jsonl(tmp_path / "small.jsonl", rows))
    result = check.run(replace(real_context, others=[small]), THRESHOLDS)
    assert result.verdict == "skipped"
    assert "needs at least 20 examples of each class in 'small'" in result.reason


@pytest.mark.parametrize(
    ("labels", "expected"),
    [(("positive", "negative"), [1, 0]), (("POS", "neg"), [1, 0]), ((1, 0), [1, 0])],
)
def test_transfer_file_labels_are_matched_by_name(
    tmp_path: Path, labels: tuple[object, object], expected: list[int]
) -> None:
    path = _write_jsonl(tmp_path / "mood.jsonl", [("great fun", labels[0]), ("dull", labels[1])])
    dataset = check.attach_transfer_file(SENTIMENT, path)
    assert dataset.label_names == SENTIMENT
    assert dataset.labels.tolist() == expected
    assert dataset.concept == "sentiment"


def test_transfer_file_with_unmatched_labels_is_a_clear_error(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "mood.jsonl", [("great fun", "happy"), ("dull", "sad")])
    with pytest.raises(InvalidInputError) as info:
        check.attach_transfer_file(SENTIMENT, path)
    message = str(info.value)
    assert "['negative', 'positive']" in message and "happy" in message


def test_transfer_reuses_sweeps_the_caller_already_ran(
    real_context, backbone, tmp_path, monkeypatch
) -> None:
    import dataclasses

    import probes.robustness.transfer as transfer
    from probes import load_dataset, probe_dataset
    from probes.robustness import load_thresholds

    tweets = load_dataset("tweets", max_samples=200, seed=0)
    swept = probe_dataset(
        backbone, tweets, store=real_context.store, n_boot=200, progress=False, probe_dir=tmp_path
    )
    ctx = dataclasses.replace(
        real_context, others=[tweets], other_sweeps={tweets.hash: (swept.split, swept.sweep)}
    )
    monkeypatch.setattr(transfer, "sweep_layers", lambda *a, **k: pytest.fail("swept again"))
    result = transfer.run(ctx, load_thresholds())
    assert result.verdict in ("pass", "fail")
    assert result.details["best_layers"]["tweets"] == swept.sweep.best("logistic").layer
