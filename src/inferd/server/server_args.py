"""Frontend (HTTP server) settings; the engine's settings are ``config.EngineArgs``."""

from __future__ import annotations

from dataclasses import dataclass, field

UVICORN_LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


@dataclass(frozen=True)
class ServerArgs:
    """What ``inferd serve`` needs besides the engine arguments.

    ``chat_template`` holds the template text itself (the CLI reads a file argument); ``api_key`` never appears in
    ``repr`` so it cannot leak into logs.
    """

    host: str | None = None  # None: all interfaces
    port: int = 8000
    api_key: str | None = field(default=None, repr=False)
    chat_template: str | None = None
    allowed_origins: tuple[str, ...] = ()
    uvicorn_log_level: str = "info"
    enable_log_requests: bool = False
    shutdown_timeout: float = 30.0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535; got {self.port}.")
        if self.shutdown_timeout < 0:
            raise ValueError(f"shutdown_timeout must be non-negative seconds; got {self.shutdown_timeout}.")
        if self.uvicorn_log_level not in UVICORN_LOG_LEVELS:
            raise ValueError(
                f"uvicorn_log_level must be one of {', '.join(UVICORN_LOG_LEVELS)}; got {self.uvicorn_log_level!r}."
            )
        if self.api_key == "":
            raise ValueError("api_key must not be empty; leave it unset to serve without a key.")

    @property
    def bind_host(self) -> str:
        return self.host if self.host else "0.0.0.0"
