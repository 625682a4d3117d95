"""One JSON error shape for every 4xx/5xx answer: ``{"error": {"code": ..., "message": ...}}``."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from audit.storage_faults import storage_fault
from audit.tenants.registry import NotFoundError, RegistryInputError
from probes.errors import InvalidInputError

logger = logging.getLogger(__name__)

INTERNAL_MESSAGE = (
    "The server hit an unexpected error; it has been logged. Try again, or tell the operator "
    "the time of the request."
)


class ApiError(Exception):
    """An answer other than success: HTTP status, a stable code, and a message naming the fix."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """Return the JSON response of one error in the API's shape."""
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def unauthorized() -> ApiError:
    """Return the one 401 answer: it never says whether the thing asked for exists."""
    return ApiError(
        401,
        "unauthorized",
        "Missing, unknown or revoked API key; send it as 'Authorization: Bearer <key>'.",
        {"WWW-Authenticate": "Bearer"},
    )


def not_found(what: str) -> ApiError:
    """Return the 404 answer for ``what``: the same whether it is missing or another tenant's."""
    return ApiError(404, "not_found", f"No such {what}.")


def _location(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"] or ["body"]
    return ".".join(parts)


def _validation_message(exc: RequestValidationError) -> tuple[int, str, str]:
    errors = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        detail = next(e for e in errors if e.get("type") == "json_invalid")
        reason = (detail.get("ctx") or {}).get("error", "JSON decode error")
        return 400, "malformed_json", f"The request body is not valid JSON ({reason})."
    lines = []
    for e in errors[:5]:
        where = _location(tuple(e.get("loc", ())))
        if e.get("type") == "extra_forbidden":
            lines.append(f"{where}: unknown field; see the route's schema at /docs")
        elif e.get("type") in ("model_attributes_type", "dict_type") and where == "body":
            lines.append("body: expected a JSON object (send Content-Type: application/json)")
        else:
            lines.append(f"{where}: {e.get('msg', 'invalid value')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return 422, "invalid_request", "Invalid request: " + "; ".join(lines) + more + "."


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that turn errors into the API's JSON error shape."""

    async def api_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    async def validation_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(*_validation_message(exc))

    async def http_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        codes = {
            400: "malformed_json",
            404: "not_found",
            405: "method_not_allowed",
            413: "payload_too_large",
        }
        code = codes.get(exc.status_code, "http_error")
        message = {
            # FastAPI's own 400: a body it could not decode before JSON parsing even began.
            400: "The request body could not be read as JSON (it is not UTF-8, or it is nested "
            "too deeply); send UTF-8 encoded JSON.",
            404: "No such route; see /docs for the API.",
        }.get(exc.status_code)
        return error_response(
            exc.status_code, code, message or str(exc.detail), getattr(exc, "headers", None)
        )

    async def missing(_request: Request, exc: Exception) -> JSONResponse:
        return error_response(404, "not_found", str(exc))

    async def invalid(_request: Request, exc: Exception) -> JSONResponse:
        return error_response(422, "invalid_input", str(exc))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(NotFoundError, missing)
    app.add_exception_handler(InvalidInputError, invalid)  # CorpusError included
    app.add_exception_handler(RegistryInputError, invalid)


class CatchAllMiddleware:
    """Answer an unexpected exception with a logged, generic 500 that leaks no internals.

    A storage fault (full disk, read-only store; see ``audit.storage_faults``) is not unexpected:
    it is answered 507 or 503 with a message naming the fix.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            fault = storage_fault(exc)
            if fault is None:
                logger.exception("unexpected error serving %s %s", scope["method"], scope["path"])
                response = error_response(500, "internal_error", INTERNAL_MESSAGE)
            else:  # a full or read-only store: the operator's fix, not a bug
                logger.error(
                    "storage fault serving %s %s: %s", scope["method"], scope["path"], fault.detail
                )
                response = error_response(fault.status, fault.code, fault.message())
            if started:
                raise
            await response(scope, receive, send)


_DESCRIPTIONS = {
    400: "Malformed JSON.",
    401: "Missing, unknown or revoked API key.",
    403: "Not allowed for this key.",
    404: "No such resource for this key (missing, or another tenant's).",
    409: "The head is not ready, or cannot do this.",
    413: "A body, text or batch over its limit.",
    415: "Unsupported content type.",
    422: "Invalid input; the message names the field and the fix.",
    429: "Rate limit exceeded; see Retry-After.",
    503: "Owner routes are off (AUDIT_ADMIN_KEY is not set), or the store is read-only.",
    507: "The server's storage is full; nothing of the request was kept.",
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Return the OpenAPI ``responses`` entry documenting these error statuses."""
    from audit.api.models import ErrorResponse

    return {s: {"model": ErrorResponse, "description": _DESCRIPTIONS[s]} for s in statuses}
