"""The FastAPI app: routes, auth, CORS, error shapes, and engine loading in the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response

import inferd
from inferd.config import EngineArgs
from inferd.server.auth import PUBLIC_PATHS, APIKeyMiddleware
from inferd.server.errors import install_exception_handlers
from inferd.server.limits import BodySizeLimitMiddleware
from inferd.server.metrics import CONTENT_TYPE_LATEST
from inferd.server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)
from inferd.server.server_args import ServerArgs
from inferd.server.serving_chat import OpenAIServingChat
from inferd.server.serving_completion import OpenAIServingCompletion
from inferd.server.serving_engine import OpenAIServing
from inferd.server.serving_tokenize import OpenAIServingTokenization
from inferd.server.state import EngineFactory, ServerState

VERSION = inferd.__version__


def build_app(
    server_args: ServerArgs, engine_args: EngineArgs, engine_factory: EngineFactory | None = None
) -> FastAPI:
    """An app that starts loading the engine when it starts (lifespan) and serves the OpenAI API once ready.

    ``engine_factory(engine_args, stat_loggers)`` defaults to ``AsyncLLM.create``; the app's ``ServerState`` is
    ``app.state.inferd``.
    """
    state = ServerState(server_args, engine_args, engine_factory)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        load = asyncio.create_task(state.load_engine(), name="inferd-load-engine")
        try:
            yield
        finally:
            if not load.done():
                load.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await load
            await state.shutdown()

    app = FastAPI(
        title="inferd",
        version=VERSION,
        summary="OpenAI-compatible LLM inference server",
        lifespan=lifespan,
    )
    app.state.inferd = state
    install_exception_handlers(app)
    if server_args.max_request_body_bytes:
        app.add_middleware(BodySizeLimitMiddleware, max_bytes=server_args.max_request_body_bytes)
    # Auth wraps the body limit: a client without a key gets 401 before any of its body is read.
    if server_args.api_keys:
        public = PUBLIC_PATHS - {"/metrics"} if server_args.metrics_require_auth else PUBLIC_PATHS
        app.add_middleware(APIKeyMiddleware, api_keys=server_args.api_keys, public_paths=public)
    if server_args.allowed_origins:  # added last: outermost, so preflight requests are answered before auth
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(server_args.allowed_origins),
            allow_methods=["*"],
            allow_headers=["*"],
        )
    _add_routes(app, state)
    return app


def _add_routes(app: FastAPI, state: ServerState) -> None:
    chat = OpenAIServingChat(state)
    completion = OpenAIServingCompletion(state)
    tokenization = OpenAIServingTokenization(state)
    models = OpenAIServing(state)

    @app.get("/health", tags=["probes"])
    async def health() -> JSONResponse:
        """200 when serving; 503 while loading, while shutting down and after the engine died."""
        status = state.status
        return JSONResponse({"status": status}, status_code=200 if status == "ready" else 503)

    @app.get("/version", tags=["probes"], response_model=None)
    async def version() -> dict[str, str]:
        return {"version": VERSION}

    @app.get("/metrics", tags=["probes"])
    async def metrics() -> Response:
        """Prometheus text format; the inferd: metrics are described in docs/serving.md."""
        engine = state.engine
        if engine is not None and engine.scheduler_stats is not None:
            state.stat_logger.record_scheduler_stats(engine.scheduler_stats)
        return Response(state.stat_logger.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", tags=["openai"], response_model=None)
    async def list_models() -> dict[str, object]:
        engine, _ = models.engine_for(None)
        cfg = engine.model_config
        data = [
            {
                "id": name,
                "object": "model",
                "created": state.start_time,
                "owned_by": "inferd",
                "root": cfg.model,
                "parent": None,
                "max_model_len": cfg.max_model_len,
            }
            for name in cfg.served_model_names
        ]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions", tags=["openai"])
    async def create_chat_completion(body: ChatCompletionRequest, raw_request: Request) -> Response:
        return await chat.create_chat_completion(body, raw_request)

    @app.post("/v1/completions", tags=["openai"])
    async def create_completion(body: CompletionRequest, raw_request: Request) -> Response:
        return await completion.create_completion(body, raw_request)

    @app.post("/tokenize", tags=["tokenizer"], response_model=None)
    async def tokenize(body: TokenizeRequest) -> dict[str, object]:
        return await tokenization.tokenize(body)

    @app.post("/detokenize", tags=["tokenizer"], response_model=None)
    async def detokenize(body: DetokenizeRequest) -> dict[str, object]:
        return await tokenization.detokenize(body)
