"""What the running API holds: settings, registry, tenant service, backbone, rate limiter."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from fastapi import Request

from audit.api.limits import RateLimiter
from audit.api.settings import ApiSettings
from audit.screening.gate import ScreeningGate
from audit.tenants.registry import Registry
from audit.tenants.service import TenantService
from probes.backbone import Backbone


def key_digest(key: str) -> bytes:
    """Return the SHA-256 digest a key is compared by (equal lengths: a constant-time compare)."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


@dataclass
class ApiState:
    """The live objects one app serves from; built at startup, closed at shutdown."""

    settings: ApiSettings
    registry: Registry
    service: TenantService
    backbone: Backbone
    limiter: RateLimiter
    admin_digest: bytes | None  # None: no AUDIT_ADMIN_KEY, owner routes answer 503
    gate: ScreeningGate | None = None  # None: the server runs without screening

    def is_admin_key(self, key: str) -> bool:
        """Return whether ``key`` is the owner's admin key (constant-time)."""
        if self.admin_digest is None:
            return False
        return hmac.compare_digest(key_digest(key), self.admin_digest)


def get_state(request: Request) -> ApiState:
    """Return the state of the app serving ``request``."""
    state = getattr(request.app.state, "api", None)
    if not isinstance(state, ApiState):
        raise RuntimeError("The API is not started: run it with its lifespan (uvicorn does).")
    return state
