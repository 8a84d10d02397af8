"""Bounds that keep one client from exhausting the server: request body size and the waiting queue.

- ``BodySizeLimitMiddleware``: bodies over ``--max-request-body-bytes`` get 413 before they are parsed (by the
  declared Content-Length, or while a chunked body streams in).
- ``AdmissionControl``: at most ``--max-waiting-requests`` sequences wait for the engine; beyond that new requests
  get 503 with ``Retry-After`` (a load balancer sends them elsewhere), and a request that could never fit gets 400.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inferd.server.errors import APIError

RETRY_AFTER_SECONDS = 1


class BodySizeLimitMiddleware:
    """Pure ASGI middleware: 413 in OpenAI's error shape for request bodies larger than ``max_bytes``."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        assert max_bytes > 0
        self.app = app
        self.max_bytes = max_bytes

    def _message(self) -> str:
        return (
            f"The request body is larger than this server accepts ({self.max_bytes} bytes, "
            "--max-request-body-bytes); send a smaller request."
        )

    def _error(self) -> APIError:
        return APIError(413, self._message(), code="request_too_large")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.max_bytes:
            await self._error().to_response()(scope, receive, send)
            return
        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge(self._message())
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if response_started:  # the app answered before reading it all; nothing more to say
                return
            await self._error().to_response()(scope, receive, send)


class _BodyTooLarge(HTTPException):
    """Raised from ``receive``; FastAPI passes HTTPExceptions of body reading on to the error handlers (413)."""

    def __init__(self, message: str) -> None:
        super().__init__(413, message)


class AdmissionControl:
    """Counts the sequences (n per request) admitted and not yet finished; the waiting part of them is what the
    engine has not started (admitted minus the engine's running requests)."""

    def __init__(self, max_waiting: int, max_n: int, running: Callable[[], int]) -> None:
        self.max_waiting = max_waiting
        self.max_n = max_n
        self._running = running
        self.admitted = 0

    @property
    def waiting(self) -> int:
        return max(0, self.admitted - self._running())

    def check_n(self, n: int, param: str = "n") -> None:
        """400 when one request asks for more completions than ``--max-n``."""
        if n > self.max_n:
            raise APIError(
                400,
                f"{param} must be at most {self.max_n} (the server's --max-n); got {n}.",
                param=param,
            )

    def check_request(self, n: int, num_prompts: int) -> None:
        """400 for n above ``--max-n``, or when one request alone (prompts × n sequences) is more than the waiting
        queue holds, so that it could never be served."""
        self.check_n(n)
        num_seqs = n * num_prompts
        if self.max_waiting and num_seqs > self.max_waiting:
            raise APIError(
                400,
                f"This request asks for {num_seqs} sequences (prompts × n), more than the server queues at once "
                f"({self.max_waiting}, --max-waiting-requests); split it into smaller requests.",
                param="prompt" if num_prompts > 1 else "n",
            )

    def admit(self, num_seqs: int) -> Admission:
        """Reserve ``num_seqs`` places; 503 with ``Retry-After`` when the waiting queue is full."""
        if self.max_waiting and self.admitted and self.waiting + num_seqs > self.max_waiting:
            raise APIError(
                503,
                f"The server is at capacity ({self.waiting} sequences waiting, --max-waiting-requests "
                f"{self.max_waiting}); retry after {RETRY_AFTER_SECONDS} s.",
                code="server_overloaded",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        self.admitted += num_seqs
        return Admission(self, num_seqs)


class Admission:
    """Places held by one engine request; released once, by ``release()`` or when garbage-collected (a stream that
    was never started, e.g. because the client left first)."""

    __slots__ = ("_control", "_num_seqs")

    def __init__(self, control: AdmissionControl, num_seqs: int) -> None:
        self._control: AdmissionControl | None = control
        self._num_seqs = num_seqs

    def release(self) -> None:
        if self._control is not None:
            self._control.admitted -= self._num_seqs
            self._control = None

    def __del__(self) -> None:
        self.release()
