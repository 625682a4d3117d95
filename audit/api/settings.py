"""The HTTP API's limits and engine settings, declared once: ``audit serve`` options come from here."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from audit.tenants.service import MAX_CORPUS_BYTES

MIB = 1024 * 1024


class ApiSettings(BaseModel):
    """Request limits, the per-tenant rate limit and the inference engine's batching settings.

    Each field is also an ``audit serve`` option (``max_text_chars`` -> ``--max-text-chars``),
    with the description below as its help text.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_request_bytes: int = Field(
        default=MIB, ge=1024, description="Largest JSON request body, in bytes (larger: 413)."
    )
    max_corpus_bytes: int = Field(
        default=MAX_CORPUS_BYTES,
        ge=1,
        le=MAX_CORPUS_BYTES,
        description="Largest corpus upload, in bytes (larger: 413).",
    )
    max_text_chars: int = Field(
        default=100_000, ge=1, description="Longest text or prompt, in characters (longer: 413)."
    )
    max_batch_texts: int = Field(
        default=256, ge=1, description="Most texts in one predict request (more: 413)."
    )
    rate_limit_per_minute: int = Field(
        default=600,
        ge=0,
        description="Requests per minute per tenant key (token bucket; 0 turns it off).",
    )
    max_export_bytes: int = Field(
        default=512 * MIB, ge=1, description="Largest activation export, in bytes (larger: 413)."
    )
    engine_max_batch: int = Field(
        default=64, ge=1, description="Texts per mixed backbone batch in the inference engine."
    )
    engine_max_wait_ms: float = Field(
        default=5.0,
        ge=0.0,
        description="How long the engine waits for more requests to fill a batch, in ms.",
    )
    head_cache_size: int = Field(
        default=256, ge=1, description="Heads kept loaded in memory (LRU)."
    )
