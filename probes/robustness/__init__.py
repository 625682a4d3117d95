"""Robustness scorecard: is a concept really represented, and robustly, not just decodable?"""

from probes.robustness.core import (
    THRESHOLDS,
    CheckContext,
    CheckResult,
    Threshold,
    load_thresholds,
)

__all__ = ["THRESHOLDS", "CheckContext", "CheckResult", "Threshold", "load_thresholds"]
