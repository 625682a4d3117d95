"""Tenants of the shared backbone: their keys, corpora, heads, training jobs and exports.

``Registry`` keeps the rows (SQLite), ``train_head`` fits a head on stored activations,
``run_mixed`` / ``InferenceEngine`` serve many tenants' heads from one backbone pass,
``TenantService`` ties them together for the HTTP API and the CLI, and ``audit_head`` says which
backbone concepts a head relies on.
"""

from audit.tenants.heads import (
    HEAD_KINDS,
    Head,
    HeadMeta,
    HeadOutput,
    HeadSpec,
    load_head,
    save_head,
    train_head,
)
from audit.tenants.registry import NotFoundError, Registry
from audit.tenants.reliance import RelianceReport, audit_head
from audit.tenants.service import TenantService, parse_corpus
from audit.tenants.serving import HeadCache, InferenceEngine, run_mixed

__all__ = [
    "HEAD_KINDS",
    "Head",
    "HeadCache",
    "HeadMeta",
    "HeadOutput",
    "HeadSpec",
    "InferenceEngine",
    "NotFoundError",
    "Registry",
    "RelianceReport",
    "TenantService",
    "audit_head",
    "load_head",
    "parse_corpus",
    "run_mixed",
    "save_head",
    "train_head",
]
