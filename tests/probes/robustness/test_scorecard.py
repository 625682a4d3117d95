"""The scorecard: presence gate, verdict arithmetic, thresholds from defaults, files and flags."""

from __future__ import annotations

import json

import numpy as np
import pytest

from probes import InvalidInputError, UnknownNameError
from probes.robustness import THRESHOLDS, load_thresholds
from probes.robustness.scorecard import CHECK_MODULES, check_names, run_scorecard


def test_real_scorecard_on_two_cheap_checks(real_context) -> None:
    card = run_scorecard(real_context, checks=["selectivity", "calibration"])
    assert card.presence.verdict == "pass"
    assert [c.check for c in card.checks] == ["selectivity", "calibration"]
    failed = [c.check for c in card.checks if c.verdict == "fail"]
    assert card.failed == failed
    assert card.overall == ("fragile" if failed else "robust")
    body = card.as_dict()
    assert body["checks"][0]["check"] == "presence"
    assert body["label_names"] == ["negative", "positive"]
    json.dumps(body)  # JSON-ready


def test_a_raised_bar_makes_the_concept_fragile(real_context) -> None:
    strict = load_thresholds(overrides={"selectivity": 0.99})
    card = run_scorecard(real_context, thresholds=strict, checks=["selectivity"])
    assert card.overall == "fragile" and card.failed == ["selectivity"]
    assert "selectivity" in card.summary_line()


def test_a_concept_no_layer_decodes_is_absent(synthetic_context) -> None:
    rng = np.random.default_rng(0)
    ctx = synthetic_context(rng.normal(size=(200, 8)), rng.integers(0, 2, 200))
    card = run_scorecard(ctx, checks=["selectivity", "mdl"])
    assert card.overall == "absent"
    assert all(c.verdict == "skipped" and "absent" in c.reason for c in card.checks)


def test_thresholds_from_file_and_overrides(tmp_path) -> None:
    toml = tmp_path / "t.toml"
    toml.write_text("[thresholds]\nselectivity = 0.3\ncausal_effect = 0.1\n")
    loaded = load_thresholds(toml, {"causal_effect": 0.2})
    assert loaded["selectivity"].value == 0.3 and loaded["causal_effect"].value == 0.2
    assert loaded["presence_auroc"] == THRESHOLDS["presence_auroc"]
    js = tmp_path / "t.json"
    js.write_text(json.dumps({"erasure_chance": 0.55}))
    assert load_thresholds(js)["erasure_chance"].value == 0.55
    with pytest.raises(UnknownNameError, match="selectivity"):
        load_thresholds(overrides={"selectiviti": 0.2})
    with pytest.raises(InvalidInputError, match="number"):
        load_thresholds(overrides={"selectivity": "high"})  # type: ignore[dict-item]
    (tmp_path / "bad.toml").write_text("selectivity = [")
    with pytest.raises(InvalidInputError, match="not valid"):
        load_thresholds(tmp_path / "bad.toml")


def test_check_names() -> None:
    assert check_names(None) == list(CHECK_MODULES)
    with pytest.raises(UnknownNameError, match="Known checks"):
        check_names(["selectivity", "vibes"])
