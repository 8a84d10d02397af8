"""``--api-key``: every route needs ``Authorization: Bearer <key>`` (or ``X-Api-Key``) except the probes in
``PUBLIC_PATHS``; /metrics too with ``--metrics-require-auth``. Several keys may be given; any of them is accepted."""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from inferd.server.errors import APIError

PUBLIC_PATHS = frozenset({"/health", "/metrics", "/version"})


class APIKeyMiddleware:
    """Pure ASGI middleware (streaming and disconnect detection pass through untouched).

    Keys are compared in constant time (every key, whichever matches); CORS preflight (OPTIONS) requests pass, as
    browsers send no credentials. Keys are never logged or echoed.
    """

    def __init__(
        self, app: ASGIApp, api_keys: tuple[str, ...], public_paths: frozenset[str] = PUBLIC_PATHS
    ) -> None:
        assert api_keys, "APIKeyMiddleware needs at least one key"
        self.app = app
        self._keys = tuple(k.encode() for k in api_keys)
        self._public = public_paths

    def _accepts(self, given: str) -> bool:
        token = given.encode("latin-1")  # Starlette decodes header bytes as latin-1: back to the bytes sent
        ok = False
        for key in self._keys:
            ok |= hmac.compare_digest(token, key)
        return ok

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS" or scope["path"] in self._public:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        auth = headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        given = token.strip() if scheme.lower() == "bearer" else headers.get("x-api-key", "")
        if self._accepts(given):
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
