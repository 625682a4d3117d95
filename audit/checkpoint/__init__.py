"""Checkpoint audits: a versioned spec, a baseline bound to a fingerprint, one check per figure.

``pytest --audit-checkpoint PATH`` (the plugin in ``audit.checkpoint.plugin``) turns the spec into
one test per check; ``audit promote PATH`` re-binds probes, screens and heads to a checkpoint
whose audit passed.
"""

from audit.checkpoint.outcome import CheckOutcome, Expectation
from audit.checkpoint.spec import AuditSpec, AuditSpecError, load_spec

__all__ = ["AuditSpec", "AuditSpecError", "CheckOutcome", "Expectation", "load_spec"]
