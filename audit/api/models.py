"""The API's request and response bodies (pydantic; they are the OpenAPI schema too)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable, machine-readable reason, e.g. 'not_found'.")
    message: str = Field(description="What went wrong and how to fix it.")


class ErrorResponse(BaseModel):
    error: ErrorDetail


# ------------------------------------------------------------------ tenants and keys
class TenantCreate(_Request):
    name: str = Field(description="A short name for the tenant, e.g. 'acme-research'.")


class TenantInfo(BaseModel):
    tenant_id: str
    name: str
    created_at: str
    export_allowed: bool


class TenantCreated(BaseModel):
    tenant_id: str
    name: str
    api_key: str = Field(description="The tenant's API key. Shown once: store it now.")


class KeyIssued(BaseModel):
    tenant_id: str
    api_key: str = Field(description="The new API key (every older key is revoked). Shown once.")


class KeysRevoked(BaseModel):
    tenant_id: str
    n_revoked: int


class ExportPermission(_Request):
    allowed: bool = Field(description="Whether this tenant may download activation exports.")


# --------------------------------------------------------------------------- corpora
class CorpusCreated(BaseModel):
    corpus_id: str
    n_lines: int = Field(description="Rows kept (blank lines are skipped).")
    label_names: list[str] = Field(description="Sorted distinct labels; empty if unlabelled.")
    n_blank_lines: int


class CorpusInfo(BaseModel):
    corpus_id: str
    n_lines: int
    label_names: list[str]
    texts_hash: str
    created_at: str


# ---------------------------------------------------------------------- heads, jobs
class HeadCreate(_Request):
    """A head to train on one of the tenant's corpora; omitted fields take HeadSpec's defaults."""

    corpus_id: str
    kind: str | None = Field(default=None, description="linear (default), mlp or blocks.")
    layer: int | None = Field(
        default=None, description="linear/mlp: block read (default: the last)."
    )
    k: int | None = Field(
        default=None, description="blocks: how many of the last blocks are copied."
    )
    pooling: str | None = Field(default=None, description="mean (default), first, last or max.")
    task: str | None = Field(
        default=None, description="classification (default), regression or lm."
    )
    hidden: int | None = Field(default=None, description="mlp width.")
    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    patience: int | None = Field(
        default=None, description="Epochs without improvement before stopping."
    )
    val_fraction: float | None = None
    weight_decay: float | None = None
    seed: int | None = None

    def spec_fields(self) -> dict[str, Any]:
        """Return the head fields the request set (null or absent: HeadSpec's default)."""
        values = self.model_dump(exclude_unset=True, exclude_none=True)
        return {k: v for k, v in values.items() if k != "corpus_id"}


class HeadSubmitted(BaseModel):
    head_id: str
    job_id: str
    status: str = Field(description="The head's status: 'training' until its job finishes.")


class JobInfo(BaseModel):
    job_id: str
    head_id: str
    status: str = Field(description="queued, running, done or failed.")
    progress: float = Field(description="Fraction of the epochs run, in [0, 1].")
    metrics: dict[str, Any]
    error: str | None
    created_at: str
    updated_at: str


class HeadInfo(BaseModel):
    head_id: str
    corpus_id: str
    kind: str
    status: str = Field(description="training, ready or failed.")
    task: str | None = None
    input_hook: str | None = None
    label_names: list[str] = Field(default_factory=list)
    metrics: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    created_at: str
    updated_at: str


# ----------------------------------------------------------------------- predictions
class PredictRequest(_Request):
    """Texts for a head: ``{"texts": [...]}``, or one text as ``{"text": "..."}``."""

    texts: list[str] | None = None
    text: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> PredictRequest:
        if (self.texts is None) == (self.text is None):
            raise ValueError('give exactly one of "texts" (a list) or "text" (a string)')
        if self.texts is not None and not self.texts:
            raise ValueError('"texts" is empty; give at least one text')
        return self

    def as_list(self) -> list[str]:
        return list(self.texts) if self.texts is not None else [self.text or ""]


class PredictResult(BaseModel):
    label: str | None = Field(default=None, description="The most likely label (classification).")
    scores: dict[str, float] = Field(description="Probability per label (classification).")
    value: float | None = Field(default=None, description="The predicted value (regression heads).")


class PredictResponse(BaseModel):
    head_id: str
    results: list[PredictResult]


class GenerateRequest(_Request):
    prompt: str
    max_new_tokens: int = Field(default=32, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, description="0: greedy; above 0: sampled.")
    seed: int = 0


class GenerateResponse(BaseModel):
    head_id: str
    text: str = Field(description="The continuation, without the prompt.")


# ---------------------------------------------------------------------------- health
class BackboneInfo(BaseModel):
    name: str
    fingerprint: str


class QueueStats(BaseModel):
    pending_requests: int
    batches_served: int
    texts_served: int
    max_batch: int
    max_wait_ms: float


class Health(BaseModel):
    status: str
    backbone: BackboneInfo
    heads_loaded: int
    queue: QueueStats
