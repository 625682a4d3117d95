"""Screening routes: screen texts alone, a tenant's flag threshold, corpus screening, the bank.

Predictions and generations are screened in their own routes (``head_routes``); these routes
expose screening by itself. Every decision made here is appended to the audit log before the
answer is sent.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from audit.api.auth import Caller, TenantId
from audit.api.errors import ApiError, not_found, responses
from audit.api.limits import check_texts
from audit.api.models import (
    CorpusScreenReport,
    FlagRecalibration,
    Screening,
    ScreenRequest,
    ScreenResponse,
)
from audit.api.state import ApiState, get_state
from audit.screening.gate import GateDecision, ScreeningGate
from audit.screening.screens import describe
from probes.datasets import validate_texts

router = APIRouter(prefix="/v1")

_AUTH = (401, 404, 429)


def gate_of(state: ApiState) -> ScreeningGate:
    """Return the running gate; 503 when the server runs without screening."""
    if state.gate is None:
        raise ApiError(
            503,
            "screening_off",
            "This server runs without screening (started with --no-screening); restart it "
            "without that option to screen requests.",
        )
    return state.gate


def screening(decision: GateDecision) -> Screening:
    return Screening(**decision.public())


@router.post(
    "/screen",
    tags=["screening"],
    summary="Screen texts: allow, flag or block, with scores and the tokens that drove them",
    description=(
        "Each text is screened in token windows over its whole length (up to max_text_chars; "
        "longer: 413) and each decision is written to the audit log before the answer. "
        "Concurrent requests share backbone batches with each other and with predictions."
    ),
    responses=responses(400, 401, 413, 422, 429, 503),
)
async def screen_texts(body: ScreenRequest, request: Request, who: Caller) -> ScreenResponse:
    state = get_state(request)
    gate = gate_of(state)
    texts = body.as_list()
    check_texts(texts, state.settings)
    validate_texts(texts)
    first_windows = None
    if gate.screener.reuses_serving_window:  # first windows come from a shared engine batch
        future = state.service.engine.submit_screen(texts, gate.screener)
        # shield: a cancelled request must not cancel the engine's Future under the engine.
        windows = await asyncio.shield(asyncio.wrap_future(future))
        first_windows = dict(enumerate(windows))
    decisions = await run_in_threadpool(
        gate.screen, texts, tenant_id=who.tenant_id, first_windows=first_windows
    )
    return ScreenResponse(results=[screening(d) for d in decisions])


@router.get(
    "/screening",
    tags=["screening"],
    summary="The screen bank in use: version, screens, calibration, thresholds",
    responses=responses(401, 429, 503),
)
def screening_bank(request: Request, who: Caller) -> dict[str, Any]:
    gate = gate_of(get_state(request))
    summary = describe(gate.bank)
    summary["backbone"] = gate.bank.backbone
    summary["flag_threshold"] = gate.flag_threshold(who.tenant_id)
    return summary


@router.put(
    "/tenants/{tenant_id}/screening/flag-threshold",
    tags=["screening"],
    summary="Set the tenant's flag threshold from its own benign traffic",
    description=(
        "The threshold flags at most target_fpr of the given benign texts; it never rises above "
        "the global block threshold, which stays as it is."
    ),
    responses=responses(400, *_AUTH, 413, 422, 503),
)
async def set_flag_threshold(
    tenant_id: TenantId, body: FlagRecalibration, request: Request
) -> dict[str, Any]:
    state = get_state(request)
    gate = gate_of(state)
    check_texts(body.texts, state.settings)
    validate_texts(body.texts)
    threshold = await run_in_threadpool(
        gate.recalibrate_flag, tenant_id, body.texts, body.target_fpr
    )
    return {"tenant_id": tenant_id, "screen_version": gate.bank.version, **threshold.as_dict()}


@router.delete(
    "/tenants/{tenant_id}/screening/flag-threshold",
    status_code=204,
    response_class=Response,
    tags=["screening"],
    summary="Go back to the bank's own flag threshold",
    responses=responses(*_AUTH, 503),
)
def clear_flag_threshold(tenant_id: TenantId, request: Request) -> Response:
    gate_of(get_state(request)).clear_flag(tenant_id)
    return Response(status_code=204)


def corpus_report(
    state: ApiState, tenant_id: str, corpus_id: str, policy: str = "refuse"
) -> tuple[CorpusScreenReport, list[str], list[Any] | None]:
    """Return the screening report of a stored corpus, its texts and labels."""
    gate = gate_of(state)
    if state.registry.get_corpus(tenant_id, corpus_id) is None:
        raise not_found("corpus")
    parsed = state.service.read_corpus(tenant_id, corpus_id)
    decisions = gate.screen(
        parsed.texts, tenant_id=tenant_id, kind="corpus", extra={"corpus_id": corpus_id}
    )
    blocked = [i + 1 for i, d in enumerate(decisions) if d.action == "block"]
    flagged = [i + 1 for i, d in enumerate(decisions) if d.action == "flag"]
    report = CorpusScreenReport(
        corpus_id=corpus_id,
        screen_version=gate.bank.version,
        n_lines=len(decisions),
        n_block=len(blocked),
        n_flag=len(flagged),
        n_allow=len(decisions) - len(blocked) - len(flagged),
        blocked_lines=blocked,
        flagged_lines=flagged,
        policy=policy,
    )
    return report, list(parsed.texts), parsed.labels


@router.post(
    "/tenants/{tenant_id}/corpora/{corpus_id}/screen",
    tags=["screening"],
    summary="Screen a stored corpus: how many lines would be blocked or flagged",
    responses=responses(*_AUTH, 503),
)
async def screen_corpus(
    tenant_id: TenantId, corpus_id: str, request: Request
) -> CorpusScreenReport:
    state = get_state(request)
    report, _, _ = await run_in_threadpool(corpus_report, state, tenant_id, corpus_id)
    return report
