"""The held-out examples behind a probe's score: top-scoring, lowest-scoring, most misclassified.

The per-probe view researchers know from feature dashboards: which texts the best probe scores
highest and lowest, and which ones it gets most confidently wrong. Only held-out rows are shown,
so every example is one the probe never saw while fitting.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from probes.run import DatasetProbeResult

N_EXAMPLES = 10
MAX_TEXT_CHARS = 500  # a report stays small whatever the dataset's text lengths


@dataclass(frozen=True)
class ProbeExample:
    """One held-out text with its true label, the probe's prediction and its score."""

    row: int  # index into the dataset the probe was fitted on
    text: str
    label: str
    predicted: str
    score: float  # the probe's probability of the positive class (label_names[1])


@dataclass(frozen=True)
class ProbeExamples:
    """The examples of one dataset's best probe, each list ordered most telling first."""

    dataset: str
    probe: str
    layer: int
    hook_name: str
    positive: str
    top: list[ProbeExample]
    bottom: list[ProbeExample]
    misclassified: list[ProbeExample]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def shorten(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    """Return ``text`` cut to at most ``limit`` characters, marked with an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def probe_examples(
    result: DatasetProbeResult, probe: str = "logistic", n: int = N_EXAMPLES
) -> ProbeExamples:
    """Return the top-, bottom-scoring and most confidently misclassified held-out examples.

    The probe is ``probe``'s best layer (by held-out AUROC) from the result's sweep; scores are its
    probability of the positive class on the held-out split.
    """
    kinds = result.sweep.probe_kinds
    kind = probe if probe in kinds else kinds[0]
    best = result.sweep.best(kind)
    fitted = result.sweep.fitted[(kind, best.hook_name)]
    dataset = result.dataset
    test = np.asarray(result.split.test)
    X = np.asarray(result.features[best.hook_name])[test]
    p_positive = fitted.predict_proba(X)[:, 1]
    classes = np.unique(dataset.labels)  # the sweep's positive class is the larger label
    truth = (dataset.labels[test] == classes[-1]).astype(int)
    predicted = (p_positive > 0.5).astype(int)
    names = (dataset.label_names[classes[0]], dataset.label_names[classes[-1]])

    def example(i: int) -> ProbeExample:
        return ProbeExample(
            row=int(test[i]),
            text=shorten(dataset.texts[test[i]]),
            label=names[truth[i]],
            predicted=names[predicted[i]],
            score=round(float(p_positive[i]), 4),
        )

    # Stable sorts keep the dataset order among ties, so the lists are deterministic.
    by_score = np.argsort(-p_positive, kind="stable")
    wrong = np.flatnonzero(predicted != truth)
    confidence = np.abs(p_positive[wrong] - 0.5)
    return ProbeExamples(
        dataset=dataset.name,
        probe=kind,
        layer=best.layer,
        hook_name=best.hook_name,
        positive=names[1],
        top=[example(i) for i in by_score[:n]],
        bottom=[example(i) for i in np.argsort(p_positive, kind="stable")[:n]],
        misclassified=[example(i) for i in wrong[np.argsort(-confidence, kind="stable")][:n]],
    )
