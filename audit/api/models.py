"""The API's request and response bodies (pydantic; they are the OpenAPI schema too)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_SEED = 2**32 - 1  # numpy's and scikit-learn's seeds are 32-bit


def _first_surrogate(body: Any) -> str | None:
    """Return where ``body`` holds a lone UTF-16 surrogate (``texts[2]``, ``body``), or None.

    JSON may escape any code unit (``"\\ud800"``), so a parsed body can hold half of a surrogate
    pair: such a string has no UTF-8 form and cannot be tokenized, stored or logged. The walk
    is iterative, so a deeply nested body cannot exhaust the stack.
    """
    stack: list[tuple[Any, str]] = [(body, "")]
    while stack:
        value, where = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return where or "body"
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str):
                    try:
                        key.encode("utf-8")
                    except UnicodeEncodeError:
                        return f"a key of {where or 'body'}"
                    name = key if len(key) <= 40 else key[:40] + "..."
                    stack.append((item, f"{where}.{name}" if where else name))
        elif isinstance(value, list):
            stack.extend((item, f"{where}[{i}]") for i, item in enumerate(value))
    return None


class _Request(BaseModel):
    """A request body: unknown fields are refused, and so are strings that are not Unicode."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        where = _first_surrogate(data)
        if where is not None:
            raise ValueError(
                f"{where} holds a lone UTF-16 surrogate (an unpaired escape in U+D800..U+DFFF, "
                "e.g. \\ud800), which is not Unicode text; send valid UTF-8, with surrogate "
                "escapes only in high/low pairs"
            )
        return data


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
class CorpusScreenReport(BaseModel):
    corpus_id: str
    screen_version: str
    n_lines: int
    n_block: int
    n_flag: int
    n_allow: int
    blocked_lines: list[int] = Field(
        description="1-based row numbers (blank lines not counted) screening would block."
    )
    flagged_lines: list[int]
    policy: str = Field(
        description="What training does with blocked lines: refuse (the default) or exclude."
    )


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
    hidden: int | None = Field(default=None, ge=1, le=8192, description="mlp width.")
    epochs: int | None = Field(default=None, ge=1, le=1000)
    lr: float | None = Field(default=None, gt=0.0, le=10.0, allow_inf_nan=False)
    batch_size: int | None = Field(default=None, ge=1, le=65_536)
    patience: int | None = Field(
        default=None, ge=1, le=1000, description="Epochs without improvement before stopping."
    )
    val_fraction: float | None = Field(default=None, ge=0.05, le=0.5, allow_inf_nan=False)
    weight_decay: float | None = Field(default=None, ge=0.0, le=10.0, allow_inf_nan=False)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    screen_policy: Literal["refuse", "exclude"] = Field(
        default="refuse",
        description=(
            "When screening would block lines of the corpus: refuse to train (422, the default) "
            "or exclude: train on the other lines (stored as a new corpus)."
        ),
    )

    def spec_fields(self) -> dict[str, Any]:
        """Return the head fields the request set (null or absent: HeadSpec's default)."""
        values = self.model_dump(exclude_unset=True, exclude_none=True)
        return {k: v for k, v in values.items() if k not in ("corpus_id", "screen_policy")}


class HeadSubmitted(BaseModel):
    head_id: str
    job_id: str
    status: str = Field(description="The head's status: 'training' until its job finishes.")
    corpus_id: str | None = Field(
        default=None, description="The corpus trained on (a new one when lines were excluded)."
    )
    corpus_screening: CorpusScreenReport | None = Field(
        default=None, description="The corpus's screening report (absent when screening is off)."
    )


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


class Screening(BaseModel):
    """A request's screening decision, as logged in the audit log under ``decision_id``."""

    decision_id: str
    decision: str = Field(description="allow, flag or block.")
    score: float = Field(description="The primary screen's calibrated probability of harm.")
    screen: str
    screen_version: str
    block_threshold: float
    flag_threshold: float
    top_tokens: list[tuple[str, float]] = Field(
        description="The tokens that raised the score most, with their share of the logit."
    )
    n_windows: int = Field(description="Token windows the text was screened in.")


class PredictResult(BaseModel):
    label: str | None = Field(default=None, description="The most likely label (classification).")
    scores: dict[str, float] = Field(
        default_factory=dict, description="Probability per label (classification)."
    )
    value: float | None = Field(default=None, description="The predicted value (regression heads).")
    blocked: bool = Field(
        default=False, description="True: screening blocked this text and no output is given."
    )
    refusal: str | None = Field(default=None, description="Why a blocked text got no output.")
    screening: Screening | None = Field(
        default=None, description="The screening decision (absent when screening is off)."
    )


class PredictResponse(BaseModel):
    head_id: str
    results: list[PredictResult]


class GenerateRequest(_Request):
    prompt: str
    max_new_tokens: int = Field(default=32, ge=1)
    temperature: float = Field(
        default=0.0, ge=0.0, allow_inf_nan=False, description="0: greedy; above 0: sampled."
    )
    seed: int = Field(default=0, ge=0, le=MAX_SEED)


class GenerateResponse(BaseModel):
    head_id: str
    text: str = Field(description="The continuation, without the prompt ('' when blocked).")
    blocked: bool = Field(default=False, description="True: screening withheld the output.")
    refusal: str | None = None
    screening: Screening | None = Field(default=None, description="The prompt's decision.")
    generation_screening: Screening | None = Field(
        default=None, description="The generated text's decision (screened before returning)."
    )


class ScreenRequest(PredictRequest):
    """Texts to screen: ``{"texts": [...]}`` or ``{"text": "..."}``."""


class ScreenResponse(BaseModel):
    results: list[Screening]


class FlagRecalibration(_Request):
    """A tenant's ordinary (benign) traffic, to set its own flag threshold."""

    texts: list[str] = Field(description="At least 20 benign requests typical of the tenant.")
    target_fpr: float = Field(default=0.05, gt=0.0, lt=1.0)


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
