"""Activation export: a tenant that trains elsewhere downloads its corpus's activations.

The payload is one safetensors file: ``values`` [total_tokens, d_model] float32 and ``offsets``
[n_texts + 1] int64 (text i is ``values[offsets[i]:offsets[i + 1]]``) at the head's input hook,
read from the ActivationStore; a blocks head adds its own weights as ``head.<name>``. Only for a
tenant the owner allowed; every export is recorded in the registry.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from fastapi import APIRouter, Query, Request, Response
from safetensors.numpy import load_file, save

from audit.api.auth import TenantId
from audit.api.errors import ApiError, not_found, responses
from audit.api.head_routes import ready_head
from audit.api.state import ApiState, get_state
from audit.tenants.heads import WEIGHTS_FILE
from audit.tenants.registry import HeadRecord
from probes.hooks import block_of, resid_post
from probes.pooling import TOKENS

EXPORT_SCHEMA_VERSION = 1

router = APIRouter(prefix="/v1")


def _hook(state: ApiState, head: HeadRecord | None, layer: int | None) -> str:
    if head is not None:
        if layer is not None:
            raise ApiError(
                422,
                "invalid_request",
                "Give head_id or layer, not both: a head's export is read at its own input hook.",
            )
        return str(head.meta["input_hook"])
    n_layers = state.backbone.n_layers
    chosen = n_layers - 1 if layer is None else layer
    if not 0 <= chosen < n_layers:
        raise ApiError(
            422,
            "invalid_input",
            f"The 'layer' parameter must be an int in [0, {n_layers - 1}]. Got {layer} instead.",
        )
    return resid_post(chosen)


def build_export(
    state: ApiState, tenant_id: str, corpus_id: str, head: HeadRecord | None, hook: str
) -> bytes:
    """Return the safetensors bytes of the corpus's per-token activations (+ blocks weights)."""
    texts = state.service.read_corpus(tenant_id, corpus_id).texts
    extraction = state.service.store.get(
        state.backbone, texts, [hook], (TOKENS,), progress=False, dataset_name=corpus_id
    )
    ragged = extraction.tokens[hook]
    n_bytes = ragged.values.size * 4 + ragged.offsets.size * 8
    limit = state.settings.max_export_bytes
    if n_bytes > limit:
        raise ApiError(
            413,
            "export_too_large",
            f"This export would be {n_bytes:,} bytes; the limit is {limit:,} "
            "(max_export_bytes). Export a smaller corpus.",
        )
    tensors: dict[str, np.ndarray] = {
        "values": np.ascontiguousarray(ragged.values, dtype=np.float32),
        "offsets": np.ascontiguousarray(ragged.offsets, dtype=np.int64),
    }
    if head is not None and head.kind == "blocks" and head.path:
        weights = load_file(str(Path(head.path) / WEIGHTS_FILE))
        tensors.update({f"head.{name}": t for name, t in weights.items()})
    metadata = {
        "schema_version": str(EXPORT_SCHEMA_VERSION),
        "backbone_name": state.backbone.name,
        "backbone_fingerprint": state.backbone.fingerprint,
        "hook_name": hook,
        "tenant_id": tenant_id,
        "corpus_id": corpus_id,
        "head_id": head.head_id if head is not None else "",
        "head_kind": head.kind if head is not None else "",
        "n_texts": str(len(texts)),
        "d_model": str(state.backbone.d_model),
        "label_names": json.dumps(list(head.meta.get("label_names", [])) if head else []),
    }
    return save(tensors, metadata=metadata)


@router.get(
    "/tenants/{tenant_id}/export",
    tags=["export"],
    summary="Download a corpus's activations (safetensors) for training elsewhere",
    description=(
        "Per-token activations of the corpus at the head's input hook (or at block `layer`'s "
        "output without a head), ragged as `values` + `offsets`; a blocks head adds its weights "
        "as `head.*`. Only if the owner allowed exports for this tenant; every export is logged."
    ),
    response_class=Response,
    responses={
        200: {
            "content": {"application/octet-stream": {}},
            "description": "A safetensors file.",
        },
        **responses(401, 403, 404, 409, 413, 422, 429),
    },
)
def export_activations(
    tenant_id: TenantId,
    request: Request,
    corpus_id: str = Query(description="The corpus whose activations are exported."),
    head_id: str | None = Query(None, description="Read at this head's input hook."),
    layer: int | None = Query(None, description="Without a head: the block whose output is read."),
) -> Response:
    state = get_state(request)
    tenant = state.registry.get_tenant(tenant_id)
    if tenant is None:
        raise not_found("tenant")
    if not tenant.export_allowed:
        raise ApiError(
            403,
            "export_not_allowed",
            "Activation export is not enabled for this tenant; ask the owner to allow it "
            '(PUT /v1/tenants/{tenant_id}/export with {"allowed": true}).',
        )
    if state.registry.get_corpus(tenant_id, corpus_id) is None:
        raise not_found("corpus")
    head = ready_head(state, tenant_id, head_id) if head_id is not None else None
    hook = _hook(state, head, layer)
    payload = build_export(state, tenant_id, corpus_id, head, hook)
    state.registry.log_export(
        tenant_id,
        corpus_id=corpus_id,
        head_id=head_id,
        layer=block_of(hook) or 0,
        n_bytes=len(payload),
    )
    return Response(
        payload,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{corpus_id}.safetensors"'},
    )
