"""OpenAI-shaped error responses: ``{"error": {"message", "type", "param", "code"}}``.

Every error the server returns goes through here, so a client sees one shape for user mistakes (4xx), readiness
(503) and unexpected failures (500, which affects only the request that hit it).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    500: "server_error",
    503: "server_error",
}


class APIError(Exception):
    """An error to return to the client as OpenAI's error JSON with ``status_code``."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status_code, "invalid_request_error")

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def to_response(self) -> JSONResponse:
        return JSONResponse(self.to_dict(), status_code=self.status_code)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def unsupported(param: str, detail: str = "") -> APIError:
    """400 for an OpenAI parameter inferd does not implement yet (never silently ignored)."""
    msg = f"'{param}' is not supported by this server yet{': ' + detail if detail else ''}."
    return APIError(400, msg, param=param, code="unsupported_parameter")


def not_ready(message: str) -> APIError:
    return APIError(503, message, code="service_unavailable")


def from_value_error(exc: ValueError, known_params: set[str] | frozenset[str]) -> APIError:
    """400 from a ``ValueError`` whose message starts with the parameter name (SamplingParams' convention)."""
    message = str(exc) or "Invalid request."
    first = message.split(" ", 1)[0].split("=", 1)[0].strip(":,.'\"`")
    return bad_request(message, param=first if first in known_params else None)


# Names pydantic puts in an error location for the member of a union that failed (not field names).
_UNION_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def _loc_to_param(loc: tuple[Any, ...]) -> str | None:
    parts = [p for p in loc if p not in ("body", "query", "path", "header")]
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif not out:
            out = str(p)
        elif not ("[" in str(p) or "-" in str(p) or p in _UNION_TAGS):
            out += f".{p}"
    return out or None


def _validation_error(exc: RequestValidationError) -> APIError:
    errors = exc.errors()
    by_param: dict[str | None, list[str]] = {}
    for err in errors:
        kind = err.get("type", "")
        if kind == "json_invalid":
            detail = (err.get("ctx") or {}).get("error", "")
            return bad_request(f"The request body is not valid JSON ({detail}); send a JSON object.")
        param = _loc_to_param(tuple(err.get("loc", ())))
        text = "missing" if kind == "missing" else str(err.get("msg", "invalid"))
        by_param.setdefault(param, []).append(text)
    if not by_param:
        return bad_request("Invalid request body.")
    messages: list[str] = []
    for param, texts in list(by_param.items())[:3]:
        if param is None:
            if "missing" in texts:
                messages.append("The request body is missing; send a JSON object.")
            else:
                messages.append(f"The request body must be a JSON object: {texts[0]}.")
        elif "missing" in texts:
            messages.append(f"Missing required parameter: '{param}'.")
        else:
            # A union field fails once per member: "Input should be a valid string, or a valid list".
            alternatives = [texts[0]] + [t.removeprefix("Input should be ") for t in texts[1:]]
            messages.append(f"Invalid value for '{param}': {', or '.join(dict.fromkeys(alternatives))}.")
    return bad_request(" ".join(messages), param=next(iter(by_param)))


async def _api_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return exc.to_response()


async def _validation_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return _validation_error(exc).to_response()


async def _http_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    if exc.status_code == 404:
        detail = f"Unknown route {request.method} {request.url.path}; see /docs for the API."
    err = APIError(exc.status_code, detail, code=code)
    return JSONResponse(err.to_dict(), status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def _internal_handler(request: Request, exc: Exception) -> JSONResponse:
    # The server logs the traceback (Starlette re-raises after this response); the process keeps serving.
    err = APIError(500, "Internal server error while processing this request; see the server log.")
    return err.to_response()


def install_exception_handlers(app: FastAPI) -> None:
    """Route every error path of ``app`` to OpenAI's error shape."""
    app.add_exception_handler(APIError, _api_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_handler)
    app.add_exception_handler(Exception, _internal_handler)
