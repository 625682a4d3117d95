"""Routes that read the audit log: a tenant sees its own decisions, the owner sees every one.

A decision id another tenant holds answers the same 404 as one that does not exist, so ids
cannot be probed. Entries come from the signed log itself; ``audit log verify`` checks them.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from audit.api.auth import Caller, TenantId
from audit.api.errors import not_found, responses
from audit.api.screen_routes import gate_of
from audit.api.state import get_state
from audit.screening.log import Decision, LogEntry, RecordKind

router = APIRouter(prefix="/v1")

MAX_PAGE = 1000


class DecisionEntry(BaseModel):
    """One audit-log entry: the decision as logged and its place in the hash chain."""

    seq: int = Field(description="The entry's position in the chain.")
    entry_hash: str = Field(description="The chained hash of this entry.")
    decision_id: str
    time: str = Field(description="When the decision was made (UTC, ISO 8601).")
    tenant_id: str | None
    head_id: str | None
    kind: str = Field(description="request, generation or corpus.")
    decision: str = Field(description="allow, flag or block.")
    score: float
    screen: str
    screen_version: str
    backbone_fingerprint: str
    layers: list[int]
    block_threshold: float
    flag_threshold: float
    top_tokens: list[tuple[str, float]]
    request_hash: str = Field(description="sha256 of the screened text.")
    text: str | None = Field(description="The text, only if the server retains texts.")


class DecisionPage(BaseModel):
    """Entries newest first; pass ``next_before_seq`` as ``before_seq`` for the next page."""

    decisions: list[DecisionEntry]
    next_before_seq: int | None


def decision_entry(entry: LogEntry) -> DecisionEntry:
    """Return the API view of a log entry: the signed record and its place in the chain."""
    return DecisionEntry(seq=entry.seq, entry_hash=entry.entry_hash, **entry.record.to_dict())


@router.get(
    "/decisions/{decision_id}",
    tags=["screening"],
    summary="Look up one screening decision by the id a response carried",
    responses=responses(401, 404, 429, 503),
)
def get_decision(decision_id: str, request: Request, who: Caller) -> DecisionEntry:
    gate = gate_of(get_state(request))
    entry = gate.log.get(decision_id) if gate.log is not None else None
    if entry is None or (not who.is_admin and entry.record.tenant_id != who.tenant_id):
        raise not_found("decision")
    return decision_entry(entry)


@router.get(
    "/tenants/{tenant_id}/decisions",
    tags=["screening"],
    summary="List the tenant's screening decisions, newest first",
    responses=responses(401, 404, 422, 429, 503),
)
def list_decisions(
    tenant_id: TenantId,
    request: Request,
    decision: Decision | None = None,
    kind: RecordKind | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    before_seq: Annotated[int | None, Query(ge=1)] = None,
) -> DecisionPage:
    gate = gate_of(get_state(request))
    if gate.log is None:
        return DecisionPage(decisions=[], next_before_seq=None)
    entries = gate.log.query(
        tenant_id=tenant_id, decision=decision, kind=kind, limit=limit, before_seq=before_seq
    )
    more = len(entries) == limit
    return DecisionPage(
        decisions=[decision_entry(e) for e in entries],
        next_before_seq=entries[-1].seq if more and entries else None,
    )
