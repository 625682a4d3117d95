"""What one audit check measured against what the spec expected, ready for a failure message."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

Comparison = Literal[">=", "<="]


@dataclass(frozen=True)
class Expectation:
    """A bar from the spec: the measured value must be ``comparison`` ``bound``."""

    comparison: Comparison
    bound: float

    def met_by(self, value: float) -> bool:
        """Return whether ``value`` clears the bar (NaN never does)."""
        if math.isnan(value):
            return False
        return value >= self.bound if self.comparison == ">=" else value <= self.bound

    def text(self) -> str:
        return f"{self.comparison} {self.bound:g}"


@dataclass(frozen=True)
class CheckOutcome:
    """One check's result: what was measured, its interval and counts, and whether it passed."""

    check_id: str  # e.g. "concept[sentiment]::presence@L5"
    title: str  # one readable sentence: what the check asks
    expected: Expectation
    measured: float
    low: float | None = None
    high: float | None = None
    n: int | None = None  # how many examples the figure rests on
    details: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None  # why the check could not be measured (the test is skipped)

    @property
    def passed(self) -> bool:
        return self.skipped is None and self.expected.met_by(self.measured)

    def measured_text(self) -> str:
        text = f"{self.measured:.6g}"
        if self.low is not None and self.high is not None:
            text += f" [{self.low:.6g}, {self.high:.6g}]"
        if self.n is not None:
            text += f" (n={self.n})"
        return text

    def message(self) -> str:
        """Return the failure (or pass) line: expected against measured, with the interval."""
        if self.skipped is not None:
            return f"{self.title}: skipped: {self.skipped}"
        verdict = "passed" if self.passed else "FAILED"
        return (
            f"{self.title}: {verdict}: expected {self.expected.text()}, "
            f"measured {self.measured_text()}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "check_id": self.check_id,
            "title": self.title,
            "expected": {"comparison": self.expected.comparison, "bound": self.expected.bound},
            "measured": None if math.isnan(self.measured) else self.measured,
            "low": self.low,
            "high": self.high,
            "n": self.n,
            "passed": self.passed,
            "skipped": self.skipped,
            "details": self.details,
        }
