"""Routes for tenants, their API keys, their corpora and the owner's export permission."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from audit.api.auth import Admin, AdminTenantId, TenantId
from audit.api.errors import ApiError, not_found, responses
from audit.api.models import (
    CorpusCreated,
    CorpusInfo,
    ExportPermission,
    KeyIssued,
    KeysRevoked,
    TenantCreate,
    TenantCreated,
    TenantInfo,
)
from audit.api.state import get_state
from audit.tenants.registry import Corpus, Tenant
from audit.tenants.service import parse_corpus

router = APIRouter(prefix="/v1")

CORPUS_CONTENT_TYPES = ("application/x-ndjson", "application/jsonl", "text/plain")
_AUTH = (401, 404, 429)


def _tenant_info(tenant: Tenant) -> TenantInfo:
    return TenantInfo(
        tenant_id=tenant.tenant_id,
        name=tenant.name,
        created_at=tenant.created_at,
        export_allowed=tenant.export_allowed,
    )


def _corpus_info(corpus: Corpus) -> CorpusInfo:
    return CorpusInfo(
        corpus_id=corpus.corpus_id,
        n_lines=corpus.n_lines,
        label_names=list(corpus.label_names),
        texts_hash=corpus.texts_hash,
        created_at=corpus.created_at,
    )


# ----------------------------------------------------------------------------- tenants
@router.post(
    "/tenants",
    status_code=201,
    tags=["tenants"],
    summary="Create a tenant and its API key (owner)",
    description="The API key is in this answer only: it is stored as a hash, never in plain.",
    responses=responses(400, 401, 403, 413, 422, 503),
)
def create_tenant(body: TenantCreate, request: Request, _owner: Admin) -> TenantCreated:
    new = get_state(request).registry.create_tenant(body.name)
    return TenantCreated(tenant_id=new.tenant.tenant_id, name=new.tenant.name, api_key=new.api_key)


@router.get(
    "/tenants",
    tags=["tenants"],
    summary="List every tenant (owner)",
    responses=responses(401, 403, 503),
)
def list_tenants(request: Request, _owner: Admin) -> list[TenantInfo]:
    return [_tenant_info(t) for t in get_state(request).registry.list_tenants()]


@router.get(
    "/tenants/{tenant_id}",
    tags=["tenants"],
    summary="Show a tenant (the tenant itself, or the owner)",
    responses=responses(*_AUTH),
)
def get_tenant(tenant_id: TenantId, request: Request) -> TenantInfo:
    tenant = get_state(request).registry.get_tenant(tenant_id)
    if tenant is None:
        raise not_found("tenant")
    return _tenant_info(tenant)


@router.delete(
    "/tenants/{tenant_id}",
    status_code=204,
    response_class=Response,
    tags=["tenants"],
    summary="Delete a tenant with its keys, corpora, heads and files",
    description="Allowed to the tenant itself and to the owner. Export records stay (ids only).",
    responses=responses(*_AUTH),
)
def delete_tenant(tenant_id: TenantId, request: Request) -> Response:
    state = get_state(request)
    state.service.delete_tenant(tenant_id)
    state.limiter.forget(tenant_id)
    return Response(status_code=204)


@router.put(
    "/tenants/{tenant_id}/export",
    tags=["tenants"],
    summary="Allow or forbid a tenant's activation exports (owner)",
    responses=responses(400, 401, 403, 404, 413, 422, 503),
)
def set_export_permission(
    body: ExportPermission, tenant_id: AdminTenantId, request: Request
) -> TenantInfo:
    registry = get_state(request).registry
    return _tenant_info(registry.set_export_allowed(tenant_id, body.allowed))


# -------------------------------------------------------------------------------- keys
@router.post(
    "/tenants/{tenant_id}/keys/rotate",
    tags=["keys"],
    summary="Issue a new API key and revoke every older one",
    responses=responses(*_AUTH),
)
def rotate_key(tenant_id: TenantId, request: Request) -> KeyIssued:
    return KeyIssued(tenant_id=tenant_id, api_key=get_state(request).registry.rotate_key(tenant_id))


@router.post(
    "/tenants/{tenant_id}/keys/revoke",
    tags=["keys"],
    summary="Revoke every API key of a tenant",
    description="The tenant can then do nothing until the owner rotates its key.",
    responses=responses(*_AUTH),
)
def revoke_keys(tenant_id: TenantId, request: Request) -> KeysRevoked:
    n_revoked = get_state(request).registry.revoke_keys(tenant_id)
    return KeysRevoked(tenant_id=tenant_id, n_revoked=n_revoked)


# ----------------------------------------------------------------------------- corpora
@router.post(
    "/tenants/{tenant_id}/corpora",
    status_code=201,
    tags=["corpora"],
    summary="Upload a JSONL corpus",
    description=(
        'The body is JSONL: one {"text": ..., "label": ...} object per line (labelled=true), or '
        'one {"text": ...} per line (labelled=false, for language-model heads). Blank lines are '
        "skipped and counted; any other bad line is refused with its line number."
    ),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {t: {"schema": {"type": "string"}} for t in CORPUS_CONTENT_TYPES},
        }
    },
    responses=responses(*_AUTH, 413, 415, 422),
)
async def upload_corpus(
    tenant_id: TenantId, request: Request, labelled: bool = True
) -> CorpusCreated:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type and content_type not in CORPUS_CONTENT_TYPES:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"A corpus is sent as JSONL with Content-Type {', '.join(CORPUS_CONTENT_TYPES)}; "
            f"got {content_type!r}.",
        )
    data = await request.body()
    service = get_state(request).service
    parsed = await run_in_threadpool(parse_corpus, data, labelled=labelled)
    corpus = await run_in_threadpool(service.store_corpus, tenant_id, parsed)
    return CorpusCreated(
        corpus_id=corpus.corpus_id,
        n_lines=corpus.n_lines,
        label_names=list(corpus.label_names),
        n_blank_lines=parsed.n_blank_lines,
    )


@router.get(
    "/tenants/{tenant_id}/corpora",
    tags=["corpora"],
    summary="List the tenant's corpora",
    responses=responses(*_AUTH),
)
def list_corpora(tenant_id: TenantId, request: Request) -> list[CorpusInfo]:
    return [_corpus_info(c) for c in get_state(request).registry.list_corpora(tenant_id)]


@router.delete(
    "/tenants/{tenant_id}/corpora/{corpus_id}",
    status_code=204,
    response_class=Response,
    tags=["corpora"],
    summary="Delete a corpus and its texts",
    description="Heads trained on it stay: they hold weights, not texts.",
    responses=responses(*_AUTH),
)
def delete_corpus(tenant_id: TenantId, corpus_id: str, request: Request) -> Response:
    if not get_state(request).service.delete_corpus(tenant_id, corpus_id):
        raise not_found("corpus")
    return Response(status_code=204)
