"""Who is calling: a tenant's API key reaches only its own tenant, the admin key reaches all.

The key is checked before anything is looked up, so a bad key gets the same 401 whether or not
the resource exists; a tenant asking for another tenant's things gets the same 404 as for
things that do not exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from audit.api.errors import ApiError, not_found, unauthorized
from audit.api.state import get_state

bearer = HTTPBearer(
    auto_error=False,
    description="A tenant's API key (ak_...), or the owner's AUDIT_ADMIN_KEY for owner routes.",
)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


@dataclass(frozen=True)
class Principal:
    """The caller: a tenant, or the owner (``tenant_id`` None) holding the admin key."""

    tenant_id: str | None

    @property
    def is_admin(self) -> bool:
        return self.tenant_id is None


def caller(request: Request, credentials: Credentials) -> Principal:
    """Return the authenticated caller; a tenant's request also takes one rate-limit token."""
    state = get_state(request)
    if credentials is None:
        raise unauthorized()
    key = credentials.credentials
    if state.is_admin_key(key):
        return Principal(None)
    tenant_id = state.registry.authenticate(key)
    if tenant_id is None:
        raise unauthorized()
    state.limiter.check(tenant_id)
    return Principal(tenant_id)


def admin(request: Request, credentials: Credentials) -> Principal:
    """Return the owner; 503 if no admin key is configured, 403 for a tenant's key."""
    state = get_state(request)
    if state.admin_digest is None:
        raise ApiError(
            503,
            "admin_disabled",
            "Owner routes are turned off: set the environment variable AUDIT_ADMIN_KEY to a long "
            "random secret and restart the server.",
        )
    if credentials is None:
        raise unauthorized()
    if state.is_admin_key(credentials.credentials):
        return Principal(None)
    if state.registry.authenticate(credentials.credentials) is None:
        raise unauthorized()
    raise ApiError(403, "admin_only", "This route needs the owner's admin key, not a tenant key.")


Caller = Annotated[Principal, Depends(caller)]
Admin = Annotated[Principal, Depends(admin)]


def owned_tenant(tenant_id: str, request: Request, who: Caller) -> str:
    """Return ``tenant_id`` if the caller may act on it; else the 404 of a missing tenant."""
    if who.is_admin:
        if get_state(request).registry.get_tenant(tenant_id) is None:
            raise not_found("tenant")
    elif who.tenant_id != tenant_id:
        raise not_found("tenant")
    return tenant_id


def admin_tenant(tenant_id: str, request: Request, _owner: Admin) -> str:
    """Return ``tenant_id`` for an owner route, after checking that the tenant exists."""
    if get_state(request).registry.get_tenant(tenant_id) is None:
        raise not_found("tenant")
    return tenant_id


TenantId = Annotated[str, Depends(owned_tenant)]
AdminTenantId = Annotated[str, Depends(admin_tenant)]
