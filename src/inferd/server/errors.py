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
    413: "invalid_request_error",
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
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status_code, "invalid_request_error")
        self.headers = headers

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def to_response(self) -> JSONResponse:
        return JSONResponse(self.to_dict(), status_code=self.status_code, headers=self.headers)


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


# The pydantic error type of request text that is not valid Unicode (its ctx names the parameter).
INVALID_TEXT_ERROR = "invalid_unicode_text"

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
        if kind == INVALID_TEXT_ERROR:  # protocol.py: text that is not valid Unicode, located by its path
            ctx = err.get("ctx") or {}
            return bad_request(str(err.get("msg", "Invalid text.")), param=ctx.get("param"))
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
    code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status_code)
    detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    if exc.status_code == 404:
        detail = f"Unknown route {request.method} {request.url.path}; see /docs for the API."
    elif exc.status_code == 400 and detail == "There was an error parsing the body":
        # FastAPI's answer to bodies json.loads cannot take: invalid UTF-8, nesting too deep, giant numbers.
        detail = "The request body could not be parsed; send a UTF-8 JSON object of reasonable nesting depth."
    err = APIError(exc.status_code, detail, code=code)
    return JSONResponse(err.to_dict(), status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def _internal_handler(request: Request, exc: Exception) -> JSONResponse:
    # The server logs the traceback (Starlette re-raises after this response); the process keeps serving.
    err = APIError(500, "Internal server error while processing this request; see the server log.")
    return err.to_response()


def install_exception_handlers(app: FastAPI) -> None:
    """Route every error path of ``app`` to OpenAI's error shape, and say so in its /openapi.json."""
    app.add_exception_handler(APIError, _api_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_handler)
    app.add_exception_handler(Exception, _internal_handler)
    _document_errors(app)


_NULLABLE_STRING = {"anyOf": [{"type": "string"}, {"type": "null"}]}
_ERROR_SCHEMA = {
    "title": "ErrorResponse",
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                           "param": _NULLABLE_STRING, "code": _NULLABLE_STRING},
        }
    },
}  # fmt: skip
_PROBES = frozenset({"/health", "/metrics", "/version"})


def _document_errors(app: FastAPI) -> None:
    """/openapi.json as the app behaves: invalid requests are 400 (not FastAPI's 422) and every other error status
    of the API routes (401, 404, 413, 500, 503) carries OpenAI's error body."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            schemas["ErrorResponse"] = _ERROR_SCHEMA
            error = {
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
            }
            for path, item in schema.get("paths", {}).items():
                for operation in item.values():
                    responses = operation.setdefault("responses", {})
                    if responses.pop("422", None) is not None:
                        responses["400"] = {"description": "Invalid request", **error}
                    if path not in _PROBES:
                        responses["default"] = {"description": "Error", **error}
            for unused in ("HTTPValidationError", "ValidationError"):
                schemas.pop(unused, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
