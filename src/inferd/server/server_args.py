"""Frontend (HTTP server) settings; the engine's settings are ``config.EngineArgs``."""

from __future__ import annotations

from dataclasses import dataclass, field

UVICORN_LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
TOOL_CALL_PARSERS = ("hermes", "llama3_json")  # server/tool_parsers.py
REASONING_PARSERS = ("qwen3",)  # server/reasoning.py


@dataclass(frozen=True)
class ServerArgs:
    """What ``inferd serve`` needs besides the engine arguments.

    ``chat_template`` holds the template text itself (the CLI reads a file argument); ``api_key`` is one key or a
    tuple of keys (any of them is accepted) and never appears in ``repr`` so it cannot leak into logs.
    The ``max_*`` bounds protect the server from requests that would exhaust it (0 = no limit where noted).
    """

    host: str | None = None  # None: all interfaces
    port: int = 8000
    api_key: str | tuple[str, ...] | None = field(default=None, repr=False)
    metrics_require_auth: bool = False  # with api_key: /metrics needs a key too
    chat_template: str | None = None
    allowed_origins: tuple[str, ...] = ()
    uvicorn_log_level: str = "info"
    enable_log_requests: bool = False
    shutdown_timeout: float = 30.0
    enable_auto_tool_choice: bool = False
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None
    max_request_body_bytes: int = 8 << 20  # larger bodies get 413; 0 = no limit
    max_n: int = 128  # most completions (n, best_of) one request may ask for
    max_waiting_requests: int = 1024  # waiting sequences before requests get 503 + Retry-After; 0 = no limit

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535; got {self.port}.")
        if self.shutdown_timeout < 0:
            raise ValueError(f"shutdown_timeout must be non-negative seconds; got {self.shutdown_timeout}.")
        if self.uvicorn_log_level not in UVICORN_LOG_LEVELS:
            raise ValueError(
                f"uvicorn_log_level must be one of {', '.join(UVICORN_LOG_LEVELS)}; got {self.uvicorn_log_level!r}."
            )
        if isinstance(self.api_key, (list, tuple)):
            object.__setattr__(self, "api_key", tuple(self.api_key) or None)
        if any(not k for k in self.api_keys):
            raise ValueError("api_key must not be empty; leave it unset to serve without a key.")
        for name in ("max_request_body_bytes", "max_waiting_requests"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 (no limit) or positive; got {getattr(self, name)}.")
        if self.max_n < 1:
            raise ValueError(f"max_n must be at least 1; got {self.max_n}.")
        if self.tool_call_parser is not None and self.tool_call_parser not in TOOL_CALL_PARSERS:
            raise ValueError(
                f"tool_call_parser must be one of {', '.join(TOOL_CALL_PARSERS)}; got {self.tool_call_parser!r}."
            )
        if self.enable_auto_tool_choice and self.tool_call_parser is None:
            raise ValueError("--enable-auto-tool-choice needs --tool-call-parser (hermes or llama3_json).")
        if self.reasoning_parser is not None and self.reasoning_parser not in REASONING_PARSERS:
            raise ValueError(
                f"reasoning_parser must be one of {', '.join(REASONING_PARSERS)}; got {self.reasoning_parser!r}."
            )

    @property
    def api_keys(self) -> tuple[str, ...]:
        """Every accepted key; empty when the server needs none."""
        if self.api_key is None:
            return ()
        return (self.api_key,) if isinstance(self.api_key, str) else tuple(self.api_key)

    @property
    def bind_host(self) -> str:
        return self.host if self.host else "0.0.0.0"
