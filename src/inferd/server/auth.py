"""``--api-key``: every route needs ``Authorization: Bearer <key>`` except the probes /health, /metrics, /version."""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from inferd.server.errors import APIError

PUBLIC_PATHS = frozenset({"/health", "/metrics", "/version"})


class APIKeyMiddleware:
    """Pure ASGI middleware (streaming and disconnect detection pass through untouched).

    The key is compared in constant time; CORS preflight (OPTIONS) requests pass, as browsers send no credentials.
    """

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self._key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS" or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        auth = headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        given = token.strip() if scheme.lower() == "bearer" else headers.get("x-api-key", "")
        if hmac.compare_digest(given.encode(), self._key):
            await self.app(scope, receive, send)
            return
        error = APIError(
            401,
            "Missing or invalid API key; send it as 'Authorization: Bearer <key>'.",
            code="invalid_api_key",
        )
        response = error.to_response()
        response.headers["WWW-Authenticate"] = "Bearer"
        await response(scope, receive, send)
