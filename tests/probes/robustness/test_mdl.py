"""Online-code MDL: real labels compress, shuffled control labels do not."""

from __future__ import annotations

import numpy as np

from probes.robustness import THRESHOLDS, CheckContext, mdl


def planted(n: int, d: int, signal: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return Gaussian features with ``signal`` added along one direction for label 1."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    X = rng.normal(size=(n, d))
    X[:, 0] += signal * y
    return X, y


def test_block_ends_grow_to_n_with_a_usable_first_block() -> None:
    ends = mdl.block_ends(700)
    assert ends[0] == mdl.MIN_FIRST_BLOCK and ends[-1] == 700
    assert ends == sorted(set(ends))
    assert ends[-2] == 350 and ends[-3] == 175  # 50% and 25% of the data
    assert mdl.block_ends(5) == [5]


def test_a_one_class_prefix_falls_back_to_the_uniform_code() -> None:
    X, y = planted(40, 3, signal=2.0)
    y = np.sort(y)  # the first 20 rows are all class 0
    total, blocks = mdl.online_codelength(X, y, [10, 20, 40], C=1.0)
    assert blocks[:2] == [10.0, 10.0]  # uniform: 1 bit per label
    assert total == sum(blocks)


def test_real_labels_compress_and_shuffled_labels_do_not(synthetic_context) -> None:
    result = mdl.run(synthetic_context(*planted(600, 20, signal=2.0)), THRESHOLDS)
    details = result.details
    assert details["compression"] > 1.3
    assert details["control_compression"] < 1.05
    assert details["real_bits"] < details["uniform_bits"] < details["control_bits"]
    assert sum(b["real_bits"] for b in details["blocks"]) == details["real_bits"]
    assert result.verdict == "pass"
    assert result.figure.low == result.figure.value == result.figure.high


def test_features_without_the_concept_do_not_compress(synthetic_context) -> None:
    result = mdl.run(synthetic_context(*planted(600, 20, signal=0.0)), THRESHOLDS)
    assert result.figure.value < 1.05
    assert result.verdict == "fail"


def test_too_few_examples_is_skipped_with_the_count_needed(synthetic_context) -> None:
    result = mdl.run(synthetic_context(*planted(40, 5, signal=2.0)), THRESHOLDS)
    assert result.verdict == "skipped" and "needs at least 40 training examples" in result.reason


def test_real_sentiment_compresses_beyond_its_control(real_context: CheckContext) -> None:
    result = mdl.run(real_context, THRESHOLDS)
    details = result.details
    assert details["n_samples"] == len(real_context.split.train)
    assert details["compression"] > details["control_compression"]
    assert details["control_compression"] < 1.05
    assert result.forward_seconds == 0 and result.fit_seconds > 0
    assert mdl.run(real_context, THRESHOLDS).details == details  # deterministic
