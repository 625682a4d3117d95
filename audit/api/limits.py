"""Request limits: body size (checked before parsing), texts per request, per-tenant rate."""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Sequence

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from audit.api.errors import ApiError, error_response
from audit.api.settings import ApiSettings

_CORPUS_UPLOAD = re.compile(r"^/v1/tenants/[^/]+/corpora/?$")


class BodyLimitMiddleware:
    """Refuse a request body over its limit with 413, before any route reads or parses it.

    A declared ``Content-Length`` over the limit is refused without reading; otherwise the body
    is read (counting the bytes actually received, chunked or not) and handed on in one piece.
    Corpus uploads have their own, larger limit.
    """

    def __init__(self, app: ASGIApp, *, max_request_bytes: int, max_corpus_bytes: int) -> None:
        self.app = app
        self.max_request_bytes = max_request_bytes
        self.max_corpus_bytes = max_corpus_bytes

    def _limit(self, scope: Scope) -> tuple[int, str]:
        if scope["method"] == "POST" and _CORPUS_UPLOAD.match(scope["path"]):
            return self.max_corpus_bytes, "max_corpus_bytes"
        return self.max_request_bytes, "max_request_bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, name = self._limit(scope)
        too_big = error_response(
            413,
            "payload_too_large",
            f"The request body is over the limit of {limit:,} bytes ({name}); send less "
            "(split a corpus, or fewer texts per request).",
        )
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await too_big(scope, receive, send)
            return
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before sending its body
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > limit:
                await too_big(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def check_texts(texts: Sequence[str], settings: ApiSettings) -> None:
    """Raise a 413 ApiError naming the limit if ``texts`` has too many or too long texts."""
    if len(texts) > settings.max_batch_texts:
        raise ApiError(
            413,
            "too_many_texts",
            f"The request has {len(texts):,} texts; the limit is {settings.max_batch_texts:,} "
            "per request (max_batch_texts). Send them in several requests.",
        )
    for i, text in enumerate(texts):
        if len(text) > settings.max_text_chars:
            raise ApiError(
                413,
                "text_too_long",
                f"Text {i} has {len(text):,} characters; the limit is "
                f"{settings.max_text_chars:,} (max_text_chars). Shorten or split it.",
            )


class RateLimiter:
    """A token bucket per tenant: ``per_minute`` requests a minute, bursts up to that many."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._rate = per_minute / 60.0  # tokens per second
        self._buckets: dict[str, tuple[float, float]] = {}  # tenant_id -> (tokens, last time)
        self._lock = threading.Lock()

    def check(self, tenant_id: str) -> None:
        """Take one token from the tenant's bucket; raise a 429 ApiError if it is empty."""
        if self.per_minute <= 0:
            return
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(tenant_id, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - last) * self._rate)
            if tokens >= 1.0:
                self._buckets[tenant_id] = (tokens - 1.0, now)
                return
            self._buckets[tenant_id] = (tokens, now)
        wait = max(1, math.ceil((1.0 - tokens) / self._rate))
        raise ApiError(
            429,
            "rate_limited",
            f"Too many requests: this key may send {self.per_minute} a minute "
            f"(rate_limit_per_minute). Retry after {wait} s.",
            {"Retry-After": str(wait)},
        )

    def forget(self, tenant_id: str) -> None:
        """Drop a deleted tenant's bucket."""
        with self._lock:
            self._buckets.pop(tenant_id, None)
