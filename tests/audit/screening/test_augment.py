"""Framed training copies: both labels alike, seeded, worded apart from the evaluation's framings."""

from __future__ import annotations

import numpy as np
import pytest

from audit.screening.augment import TRAINING_FRAMINGS, augment_framings, is_framed
from audit.screening.catalog import default_training_data
from audit.screening.robustness import FRAMINGS
from probes.errors import InvalidInputError
from probes.requests import RequestSet


def _requests(n_benign: int, n_harmful: int) -> RequestSet:
    labels = [0] * n_benign + [1] * n_harmful
    return RequestSet(
        texts=tuple(f"request <<{i}>>" for i in range(len(labels))),
        labels=np.array(labels),
        sources=tuple("b" if y == 0 else "h" for y in labels),
        categories=(None,) * len(labels),
        split="train",
    )


def test_both_labels_are_framed_in_the_same_proportion() -> None:
    base = _requests(70, 30)
    out = augment_framings(base, 0.3, seed=1)
    framed = [i for i, s in enumerate(out.sources) if is_framed(s)]
    assert out.texts[:100] == base.texts and len(framed) == 21 + 9
    assert int(out.labels[framed].sum()) == 9  # 30% of each label
    for i in framed:
        inner = next(t for t in base.texts if t in out.texts[i])
        assert out.labels[i] == base.labels[base.texts.index(inner)]
        assert out.texts[i] != inner
    assert augment_framings(base, 0.3, seed=1).texts == out.texts
    assert augment_framings(base, 0.3, seed=2).texts != out.texts
    assert augment_framings(base, 0.0) is base
    with pytest.raises(InvalidInputError, match="fraction"):
        augment_framings(base, 1.5)


def test_training_framings_share_no_wording_with_the_evaluation_framings() -> None:
    def grams(text: str) -> set[tuple[str, ...]]:
        words = text.lower().replace("{prompt}", " ").split()
        return {tuple(words[i : i + 5]) for i in range(len(words) - 4)}

    evaluation = set().union(*(grams(t) for _, t in FRAMINGS))
    for template in TRAINING_FRAMINGS:
        assert "{prompt}" in template
        assert not grams(template) & evaluation, template


def test_default_training_data_frames_train_only() -> None:
    train, calibration = default_training_data(max_train=200, max_calibration=100)
    plain = [s for s in train.sources if not is_framed(s)]
    assert len(plain) == 200 and len(train.sources) == 260
    assert not any(is_framed(s) for s in calibration.sources)
    off, _ = default_training_data(max_train=200, max_calibration=100, framed_fraction=0.0)
    assert off.n_samples == 200
