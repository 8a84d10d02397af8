"""Run the app under uvicorn with inferd's shutdown rules.

- The port answers at once; the engine loads in the app's lifespan (a failed load exits with status 1).
- SIGTERM / SIGINT: new requests and /health get 503, in-flight requests may finish for ``--shutdown-timeout``
  seconds, the rest are aborted, and the process exits 0. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from types import FrameType

import uvicorn

from inferd.config import EngineArgs
from inferd.server.app import VERSION, build_app
from inferd.server.server_args import ServerArgs
from inferd.server.state import EngineFactory, ServerState

logger = logging.getLogger("inferd.server")


class _InferdServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self.state = state
        self.exit_code = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._signalled = False
        self._drain_task: asyncio.Task[None] | None = None
        state.on_fatal = self._on_fatal

    def _on_fatal(self) -> None:
        self.exit_code = 1
        self.should_exit = True

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not recorded in uvicorn's captured signals: it would re-raise them at exit (status 128 + signal, not 0).
        if self._signalled:
            self.force_exit = True
            self.should_exit = True
            return
        self._signalled = True
        if self._loop is None or self.state.engine is None:
            self.should_exit = True  # nothing to drain (still loading or never started)
            return
        self.state.draining = True
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self._drain_task = asyncio.get_running_loop().create_task(self._drain_and_exit())

    async def _drain_and_exit(self) -> None:
        try:
            await self.state.drain(self.state.args.shutdown_timeout)
        finally:
            self.should_exit = True


def run_server(
    server_args: ServerArgs, engine_args: EngineArgs, engine_factory: EngineFactory | None = None
) -> int:
    """Serve until SIGTERM/SIGINT (returns 0) or until the engine fails to load (returns 1)."""
    app = build_app(server_args, engine_args, engine_factory)
    level = server_args.uvicorn_log_level
    config = uvicorn.Config(
        app,
        host=server_args.bind_host,
        port=server_args.port,
        log_level=level,
        access_log=server_args.enable_log_requests or level in ("debug", "trace"),
        timeout_graceful_shutdown=5,
        lifespan="on",
    )
    server = _InferdServer(config, app.state.inferd)
    logger.info(
        "inferd %s serving %s on http://%s:%d (API key %s)",
        VERSION,
        engine_args.model,
        server_args.bind_host,
        server_args.port,
        "required" if server_args.api_key else "not required",
    )
    server.run()
    return server.exit_code
