"""Routes for heads: training jobs, predictions through the shared engine, generation."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from audit.api.auth import Caller, TenantId
from audit.api.errors import ApiError, not_found, responses
from audit.api.limits import check_texts
from audit.api.models import (
    GenerateRequest,
    GenerateResponse,
    HeadCreate,
    HeadInfo,
    HeadSubmitted,
    JobInfo,
    PredictRequest,
    PredictResponse,
    PredictResult,
)
from audit.api.screen_routes import corpus_report, screening
from audit.api.state import ApiState, get_state
from audit.screening.gate import REFUSAL
from audit.tenants.registry import HeadRecord, Job
from audit.tenants.service import ParsedCorpus, public_metrics, spec_from_dict
from probes.datasets import validate_texts

router = APIRouter(prefix="/v1")

_AUTH = (401, 404, 429)


def head_info(record: HeadRecord) -> HeadInfo:
    """Return the public view of a head row (metrics without the per-epoch history)."""
    meta = record.meta
    metrics = public_metrics(meta.get("metrics") or {})
    return HeadInfo(
        head_id=record.head_id,
        corpus_id=record.corpus_id,
        kind=record.kind,
        status=record.status,
        task=meta.get("task"),
        input_hook=meta.get("input_hook"),
        label_names=list(meta.get("label_names") or []),
        metrics=metrics,
        error=meta.get("error"),
        created_at=record.created_at,
        updated_at=record.updated_at,
    )


def job_info(job: Job) -> JobInfo:
    return JobInfo(
        job_id=job.job_id,
        head_id=job.head_id,
        status=job.status,
        progress=job.progress,
        metrics=job.metrics,
        error=job.error,
        created_at=job.created_at,
        updated_at=job.updated_at,
    )


def ready_head(state: ApiState, tenant_id: str, head_id: str) -> HeadRecord:
    """Return the tenant's head if it is ready; 404 if missing (or another's), else 409."""
    record = state.registry.get_head(tenant_id, head_id)
    if record is None:
        raise not_found("head")
    if record.status != "ready":
        error = record.meta.get("error")
        why = f": {error}" if error else "; poll its job (GET /v1/jobs/{job_id}) until it is done"
        raise ApiError(409, "head_not_ready", f"Head {head_id} is {record.status}, not ready{why}.")
    return record


# ------------------------------------------------------------------------ training
@router.post(
    "/tenants/{tenant_id}/heads",
    status_code=202,
    tags=["heads"],
    summary="Train a head on a corpus (in the background)",
    description="Answers at once with the head and its job; poll GET /v1/jobs/{job_id}.",
    responses=responses(400, *_AUTH, 413, 422),
)
def create_head(body: HeadCreate, tenant_id: TenantId, request: Request) -> HeadSubmitted:
    state = get_state(request)
    spec = spec_from_dict(body.spec_fields())
    if state.registry.get_corpus(tenant_id, body.corpus_id) is None:
        raise not_found("corpus")
    corpus_id, report = body.corpus_id, None
    if state.gate is not None:  # screen the corpus before any training
        report, texts, labels = corpus_report(state, tenant_id, corpus_id, body.screen_policy)
        if report.n_block and body.screen_policy == "refuse":
            shown = ", ".join(str(n) for n in report.blocked_lines[:20])
            raise ApiError(
                422,
                "corpus_blocked",
                f"Screening blocks {report.n_block} of the corpus's {report.n_lines} rows "
                f"(rows {shown}{', ...' if report.n_block > 20 else ''}); the head is not "
                "trained. Remove those rows, or ask for screen_policy='exclude' to train on "
                "the others.",
            )
        if report.n_block:  # exclude: the kept rows become a corpus of their own
            blocked = set(report.blocked_lines)
            keep = [i for i in range(len(texts)) if i + 1 not in blocked]
            if not keep:
                raise ApiError(422, "corpus_blocked", "Screening blocks every row of the corpus.")
            kept = ParsedCorpus(
                [texts[i] for i in keep],
                None if labels is None else [labels[i] for i in keep],
                0,
            )
            corpus_id = state.service.store_corpus(tenant_id, kept).corpus_id
    record, job = state.service.submit_training(tenant_id, corpus_id, spec)
    return HeadSubmitted(
        head_id=record.head_id,
        job_id=job.job_id,
        status=record.status,
        corpus_id=corpus_id,
        corpus_screening=report,
    )


@router.get(
    "/jobs/{job_id}",
    tags=["heads"],
    summary="Show a training job: status, progress, metrics, error",
    responses=responses(*_AUTH),
)
def get_job(job_id: str, request: Request, who: Caller) -> JobInfo:
    registry = get_state(request).registry
    if who.tenant_id is None:
        job = registry.job_by_id(job_id)
    else:
        job = registry.get_job(who.tenant_id, job_id)
    if job is None:
        raise not_found("job")
    return job_info(job)


@router.get(
    "/tenants/{tenant_id}/heads",
    tags=["heads"],
    summary="List the tenant's heads",
    responses=responses(*_AUTH),
)
def list_heads(tenant_id: TenantId, request: Request) -> list[HeadInfo]:
    return [head_info(r) for r in get_state(request).registry.list_heads(tenant_id)]


@router.get(
    "/tenants/{tenant_id}/heads/{head_id}",
    tags=["heads"],
    summary="Show a head: status, kind, labels, metrics",
    responses=responses(*_AUTH),
)
def get_head(tenant_id: TenantId, head_id: str, request: Request) -> HeadInfo:
    record = get_state(request).registry.get_head(tenant_id, head_id)
    if record is None:
        raise not_found("head")
    return head_info(record)


@router.delete(
    "/tenants/{tenant_id}/heads/{head_id}",
    status_code=204,
    response_class=Response,
    tags=["heads"],
    summary="Delete a head, its weights and its jobs",
    responses=responses(*_AUTH),
)
def delete_head(tenant_id: TenantId, head_id: str, request: Request) -> Response:
    if not get_state(request).service.delete_head(tenant_id, head_id):
        raise not_found("head")
    return Response(status_code=204)


# --------------------------------------------------------------------- predictions
@router.post(
    "/tenants/{tenant_id}/heads/{head_id}/predict",
    tags=["predictions"],
    summary="Run a head on texts",
    description=(
        "Requests of every tenant are gathered into shared backbone batches. Classification "
        "heads answer a label and per-label probabilities; regression heads a value."
    ),
    response_model_exclude_none=True,
    responses=responses(400, *_AUTH, 409, 413, 422),
)
async def predict(
    tenant_id: TenantId, head_id: str, body: PredictRequest, request: Request
) -> PredictResponse:
    state = get_state(request)
    texts = body.as_list()
    check_texts(texts, state.settings)
    validate_texts(texts)
    ready_head(state, tenant_id, head_id)
    gate = state.gate
    screener = gate.screener if gate is not None and gate.screener.reuses_serving_window else None
    future = state.service.submit_predict(tenant_id, head_id, texts, screener=screener)
    # shield: a cancelled request must not cancel the engine's Future under the engine.
    outputs = await asyncio.shield(asyncio.wrap_future(future))
    if gate is None:
        return PredictResponse(
            head_id=head_id, results=[PredictResult(**o.as_dict()) for o in outputs]
        )
    windows = future.windows.result() if screener is not None else []  # type: ignore[attr-defined]
    decisions = await run_in_threadpool(
        gate.screen,
        texts,
        tenant_id=tenant_id,
        head_id=head_id,
        first_windows=dict(enumerate(windows)),
    )
    results = []
    for output, decision in zip(outputs, decisions, strict=True):
        if decision.action == "block":
            results.append(
                PredictResult(blocked=True, refusal=REFUSAL, screening=screening(decision))
            )
        else:
            results.append(PredictResult(**output.as_dict(), screening=screening(decision)))
    return PredictResponse(head_id=head_id, results=results)


@router.post(
    "/tenants/{tenant_id}/heads/{head_id}/generate",
    tags=["predictions"],
    summary="Continue a prompt with a language-model head",
    responses=responses(400, *_AUTH, 409, 413, 422),
)
def generate(
    tenant_id: TenantId, head_id: str, body: GenerateRequest, request: Request
) -> GenerateResponse:
    state = get_state(request)
    limit = state.settings.max_text_chars
    if len(body.prompt) > limit:
        raise ApiError(
            413,
            "text_too_long",
            f"The prompt has {len(body.prompt):,} characters; the limit is {limit:,} "
            "(max_text_chars).",
        )
    record = ready_head(state, tenant_id, head_id)
    try:
        from audit.tenants.lm import generate as lm_generate
    except ImportError as exc:
        raise ApiError(
            409,
            "lm_unavailable",
            "Language-model heads are not available in this installation (audit.tenants.lm "
            "cannot be imported); upgrade the alignment-audit package.",
        ) from exc
    task = record.meta.get("task")
    if task != "lm":
        raise ApiError(
            422,
            "not_lm_head",
            f"Head {head_id} is a {task or record.kind} head; /generate needs a language-model "
            "head (kind='blocks', task='lm', on a decoder backbone such as smollm2). Use "
            "/predict for this head.",
        )
    validate_texts([body.prompt])
    gate = state.gate
    prompt_decision = None
    if gate is not None:
        [prompt_decision] = gate.screen([body.prompt], tenant_id=tenant_id, head_id=head_id)
        if prompt_decision.action == "block":
            return GenerateResponse(
                head_id=head_id,
                text="",
                blocked=True,
                refusal=REFUSAL,
                screening=screening(prompt_decision),
            )
    head = state.service.head(tenant_id, head_id)
    text = lm_generate(
        state.backbone,
        head,
        body.prompt,
        max_new_tokens=body.max_new_tokens,
        temperature=body.temperature,
        seed=body.seed,
    )
    if gate is None or not text.strip():
        return GenerateResponse(
            head_id=head_id,
            text=text,
            screening=None if prompt_decision is None else screening(prompt_decision),
        )
    # The generation is screened (as a continuation of its prompt) before it is returned.
    [out_decision] = gate.screen([text], tenant_id=tenant_id, head_id=head_id, kind="generation")
    blocked = out_decision.action == "block"
    return GenerateResponse(
        head_id=head_id,
        text="" if blocked else text,
        blocked=blocked,
        refusal=REFUSAL if blocked else None,
        screening=screening(prompt_decision) if prompt_decision is not None else None,
        generation_screening=screening(out_decision),
    )
