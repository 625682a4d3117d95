"""The screening gate: screen requests, apply per-tenant flag thresholds, log every decision.

``ScreeningGate.screen`` is what the serving path calls: it screens texts with the ``Screener``
(reusing first-window scores a serving forward already produced), applies a tenant's own flag
threshold when it has one (the block threshold is global and never changes per tenant), and
appends one record per decision to the audit log before returning, so every decision a caller
is told about is already durable.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from audit.screening.log import AuditLog, Decision, DecisionRecord, RecordKind, new_decision_id
from audit.screening.screener import Screener, ScreenResult, WindowScore
from audit.screening.thresholds import Threshold, check_fpr, measure_threshold, threshold_for_fpr
from probes.atomic import atomic_write
from probes.errors import InvalidInputError

REFUSAL = (
    "This request was blocked by the service's safety screening. If you believe this is a "
    "mistake, contact the operator and quote the decision id."
)


@dataclass(slots=True)  # built per request: slotted, not frozen (see screener.WindowScore)
class GateDecision:
    """One text's screening outcome as the serving path reports it (treat it as a value)."""

    decision_id: str
    action: str  # allow | flag | block
    score: float
    screen: str
    version: str
    block_threshold: float
    flag_threshold: float
    top_tokens: tuple[tuple[str, float], ...]
    n_windows: int
    scores: dict[str, float]

    def public(self) -> dict[str, Any]:
        """Return the JSON view an API response carries."""
        return {
            "decision_id": self.decision_id,
            "decision": self.action,
            "score": round(self.score, 6),
            "screen": self.screen,
            "screen_version": self.version,
            "block_threshold": self.block_threshold,
            "flag_threshold": self.flag_threshold,
            "top_tokens": [[t, w] for t, w in self.top_tokens],
            "n_windows": self.n_windows,
        }


class ScreeningGate:
    """Screens texts for the serving path and records each decision in the audit log."""

    def __init__(
        self,
        screener: Screener,
        log: AuditLog | None,
        *,
        retain_text: bool = False,
        tenant_flags_path: str | Path | None = None,
    ) -> None:
        self.screener = screener
        self.log = log
        self.retain_text = retain_text
        self._flags_path = Path(tenant_flags_path) if tenant_flags_path else None
        self._lock = threading.Lock()
        self._flags: dict[str, dict[str, Any]] = self._read_flags()

    @property
    def bank(self) -> Any:
        return self.screener.bank

    # ------------------------------------------------------------ tenant thresholds
    def _read_flags(self) -> dict[str, dict[str, Any]]:
        if self._flags_path is None or not self._flags_path.is_file():
            return {}
        try:
            data = json.loads(self._flags_path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise InvalidInputError(
                f"Tenant flag thresholds {self._flags_path} are not valid JSON ({exc}); "
                "delete the file to go back to the bank's flag threshold."
            ) from exc
        return {str(k): dict(v) for k, v in data.items()}

    def _write_flags(self) -> None:
        if self._flags_path is None:
            return
        body = json.dumps(self._flags, indent=2, sort_keys=True)
        atomic_write(self._flags_path, lambda tmp: Path(tmp).write_text(body, encoding="utf-8"))

    def flag_threshold(self, tenant_id: str | None) -> float:
        """Return the flag threshold that applies to ``tenant_id`` under the current bank."""
        entry = self._flags.get(tenant_id or "")
        if entry and entry.get("bank_version") == self.bank.version:
            return float(entry["flag"]["value"])
        return float(self.screener.primary.flag.value)

    def recalibrate_flag(
        self, tenant_id: str, benign_texts: Sequence[str], target_fpr: float = 0.05
    ) -> Threshold:
        """Set a tenant's flag threshold from its own benign traffic; the block threshold stays.

        The threshold is the lowest that flags at most ``target_fpr`` of ``benign_texts``,
        capped at the global block threshold so flag stays the milder action.
        """
        target_fpr = check_fpr(target_fpr)
        if len(benign_texts) < 20:
            raise InvalidInputError(
                f"Recalibrating a flag threshold needs at least 20 benign texts; got "
                f"{len(benign_texts)}. Send more of the tenant's ordinary traffic."
            )
        scores = np.array([r.score for r in self.screener.screen(benign_texts)])
        block = self.bank.screen(self.bank.primary).block
        flag = threshold_for_fpr("flag", target_fpr, scores)
        if flag.value > block.value:
            flag = measure_threshold("flag", block.value, target_fpr, scores)
        with self._lock:
            self._flags[tenant_id] = {"bank_version": self.bank.version, "flag": flag.as_dict()}
            self._write_flags()
        return flag

    def clear_flag(self, tenant_id: str) -> bool:
        """Drop a tenant's own flag threshold; return whether it had one."""
        with self._lock:
            had = self._flags.pop(tenant_id, None) is not None
            self._write_flags()
        return had

    # ------------------------------------------------------------ screening
    def screen(
        self,
        texts: Sequence[str],
        *,
        tenant_id: str | None = None,
        head_id: str | None = None,
        kind: str = "request",
        first_windows: Mapping[int, WindowScore | ScreenResult] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> list[GateDecision]:
        """Return one decision per text, each already appended (durably) to the audit log.

        ``first_windows`` holds what a serving forward already gave for a text
        (``Screener.screen_forward``): its finished result, or its first window's score.
        """
        results, decisions = self.decide(texts, tenant_id=tenant_id, first_windows=first_windows)
        self.record(texts, results, decisions, tenant_id, head_id, kind, extra)
        return decisions

    def decide(
        self,
        texts: Sequence[str],
        *,
        tenant_id: str | None = None,
        first_windows: Mapping[int, WindowScore | ScreenResult] | None = None,
    ) -> tuple[list[ScreenResult], list[GateDecision]]:
        """Return each text's screening result and its decision under ``tenant_id``'s thresholds
        (nothing logged: ``record`` does that)."""
        results = self.screener.screen(texts, first_windows=first_windows)
        flag_value = self.flag_threshold(tenant_id)
        return results, [self._decision(r, flag_value) for r in results]

    def record(
        self,
        texts: Sequence[str],
        results: Sequence[ScreenResult],
        decisions: Sequence[GateDecision],
        tenant_id: str | None = None,
        head_id: str | None = None,
        kind: str = "request",
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Append one record per decision to the audit log (durable when this returns)."""
        if self.log is None:
            return
        self.log.append(
            [
                self._record(text, result, decision, tenant_id, head_id, kind, extra)
                for text, result, decision in zip(texts, results, decisions, strict=True)
            ]
        )

    def _decision(self, result: ScreenResult, flag_value: float) -> GateDecision:
        d = result.decision
        action = (
            "block"
            if d.score >= d.block_threshold
            else "flag"
            if d.score >= flag_value
            else "allow"
        )
        return GateDecision(
            decision_id=new_decision_id(),
            action=action,
            score=d.score,
            screen=d.screen,
            version=d.version,
            block_threshold=d.block_threshold,
            flag_threshold=flag_value,
            top_tokens=result.top_tokens,
            n_windows=result.n_windows,
            scores=d.scores,  # shared with the result's decision: both are values
        )

    def _record(
        self,
        text: str,
        result: ScreenResult,
        decision: GateDecision,
        tenant_id: str | None,
        head_id: str | None,
        kind: str,
        extra: Mapping[str, Any] | None,
    ) -> DecisionRecord:
        return DecisionRecord.create(
            decision_id=decision.decision_id,
            text=text,
            retain_text=self.retain_text,
            tenant_id=tenant_id,
            head_id=head_id,
            screen=decision.screen,
            screen_version=decision.version,
            backbone_fingerprint=self.bank.fingerprint,
            layers=list(result.layers),
            score=decision.score,
            block_threshold=decision.block_threshold,
            flag_threshold=decision.flag_threshold,
            decision=cast(Decision, decision.action),
            top_tokens=[[t, w] for t, w in decision.top_tokens],
            kind=cast(RecordKind, kind),
            extra={
                "scores": decision.scores,
                "n_windows": result.n_windows,
                "window": result.window,
                **dict(extra or {}),
            },
        )
