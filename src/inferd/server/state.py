"""The server's lifecycle: loading → ready → draining, or failed / dead; the engine it talks to.

The HTTP port answers while the engine loads in a background task; requests other than /health, /version and
/metrics get 503 until it is ready, while draining after SIGTERM, and after the engine core died.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from inferd.config import EngineArgs
from inferd.engine.stats import StatLoggerBase
from inferd.outputs import CompletionOutput, RequestOutput
from inferd.sampling_params import SamplingParams
from inferd.server.errors import APIError, from_value_error, not_ready
from inferd.server.limits import Admission, AdmissionControl
from inferd.server.metrics import PrometheusStatLogger
from inferd.server.server_args import ServerArgs

logger = logging.getLogger("inferd.server")
T = TypeVar("T")

_PARAM_NAMES = frozenset({"prompt", "messages", "max_tokens", "logprobs", "logit_bias", "stop", "seed"})


class EngineClient(Protocol):
    """What the server needs from ``inferd.engine.async_llm.AsyncLLM``."""

    model_config: Any
    tokenizer: Any
    errored: bool
    scheduler_stats: Any

    def generate(
        self,
        prompt: str | None,
        prompt_token_ids: list[int],
        sampling_params: SamplingParams,
        request_id: str,
    ) -> AsyncIterator[RequestOutput]: ...

    async def abort(self, request_id: str) -> None: ...

    async def shutdown(self) -> None: ...


EngineFactory = Callable[[EngineArgs, list[StatLoggerBase]], Coroutine[Any, Any, EngineClient]]


async def _default_engine_factory(
    engine_args: EngineArgs, stat_loggers: list[StatLoggerBase]
) -> EngineClient:
    # Start the engine process(es) first: their imports and model load then run while this process imports the
    # frontend (torch, transformers: seconds), off the event loop so /health answers meanwhile.
    from inferd.engine.dp_client import start_engine_client

    client = await asyncio.to_thread(start_engine_client, engine_args)
    try:
        module = await asyncio.to_thread(importlib.import_module, "inferd.engine.async_llm")
    except BaseException:
        client.shutdown()
        raise
    return await module.AsyncLLM.create(engine_args, stat_loggers=stat_loggers, client=client)


def served_names_of(engine_args: EngineArgs) -> tuple[str, ...]:
    names = engine_args.served_model_name
    if not names:
        return (engine_args.model,)
    return (names,) if isinstance(names, str) else tuple(names)


class ServerState:
    """Shared by all routes of one app; created by ``build_app``."""

    def __init__(
        self, server_args: ServerArgs, engine_args: EngineArgs, engine_factory: EngineFactory | None = None
    ) -> None:
        self.args = server_args
        self.engine_args = engine_args
        self.engine_factory = engine_factory or _default_engine_factory
        self.engine: EngineClient | None = None
        self.load_error: BaseException | None = None
        self.draining = False
        self.inflight: set[str] = set()
        self._server_aborted: set[str] = set()
        self.start_time = int(time.time())
        self.stat_logger = PrometheusStatLogger(served_names_of(engine_args)[0])
        # One thread: fast tokenizers are not safe to call from several threads at once.
        self.tokenizer_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inferd-tokenizer")
        self.on_fatal: Callable[[], None] | None = (
            None  # set by the launcher: stop serving (exit non-zero) after a load failure or the engine's death
        )
        self.admission = AdmissionControl(
            server_args.max_waiting_requests, server_args.max_n, self._num_running
        )
        self._watchdog: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def status(self) -> str:
        """ "loading" | "ready" | "draining" | "failed" | "dead"."""
        if self.load_error is not None:
            return "failed"
        if self.engine is None:
            return "loading"
        if self.engine.errored:
            return "dead"
        return "draining" if self.draining else "ready"

    async def load_engine(self) -> None:
        """Create the engine; on failure log why and ask the launcher to exit non-zero."""
        model = self.engine_args.model
        logger.info("Loading model %s ...", model)
        t0 = time.perf_counter()
        try:
            engine = await self.engine_factory(self.engine_args, [self.stat_logger])
        except asyncio.CancelledError:
            raise
        except ValueError as e:
            self.load_error = e
            logger.error("Could not start the engine for %s: %s", model, e)
        except Exception as e:
            self.load_error = e
            logger.exception("Could not start the engine for %s: %s", model, e)
        else:
            self.engine = engine
            logger.info("Model %s loaded in %.1f s; ready for requests.", model, time.perf_counter() - t0)
            self._watchdog = asyncio.create_task(self._watch_engine(), name="inferd-engine-watchdog")
            return
        if self.on_fatal is not None:
            self.on_fatal()

    async def _watch_engine(self, interval: float = 0.1) -> None:
        """Once the engine dies (/health already says 503), ask the launcher to exit non-zero so that a supervisor
        (container runtime, Kubernetes) restarts the server; requests in flight have their errors by then."""
        assert self.engine is not None
        while not self.engine.errored:
            await asyncio.sleep(interval)
        logger.error(
            "The engine process died; stopping the server (exit status 1) so that it can be restarted."
        )
        if self.on_fatal is not None:
            self.on_fatal()

    def _num_running(self) -> int:
        stats = self.engine.scheduler_stats if self.engine is not None else None
        return int(stats.num_running_reqs) if stats is not None else 0

    async def shutdown(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self.engine is not None:
            await self.engine.shutdown()
        self.tokenizer_executor.shutdown(wait=False, cancel_futures=True)

    def require_engine(self) -> EngineClient:
        """The engine when requests may be served; otherwise a 503 ``APIError`` saying why."""
        status = self.status
        if status == "ready":
            assert self.engine is not None
            return self.engine
        message = {
            "loading": "The model is still loading; retry when /health returns 200.",
            "draining": "The server is shutting down and accepts no new requests.",
            "failed": "The engine failed to start; see the server log.",
            "dead": "The engine stopped unexpectedly; the server must be restarted.",
        }[status]
        raise not_ready(message)

    async def drain(self, timeout: float) -> None:
        """Refuse new requests, let in-flight ones finish for up to ``timeout`` seconds, then abort the rest."""
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self.inflight:
            logger.info("Shutting down: waiting up to %g s for %d request(s).", timeout, len(self.inflight))
        while self.inflight and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self.inflight and self.engine is not None:
            logger.warning("Aborting %d request(s) still running after %g s.", len(self.inflight), timeout)
            for request_id in list(self.inflight):
                self._server_aborted.add(request_id)
                await self.engine.abort(request_id)
            grace = loop.time() + 2.0
            while self.inflight and loop.time() < grace:
                await asyncio.sleep(0.05)

    # ------------------------------------------------------------------ per request
    async def run_tokenizer(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run tokenizer / template work off the event loop (long prompts must not stall other streams)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.tokenizer_executor, functools.partial(fn, *args, **kwargs))

    def generate(
        self, prompt: str | None, prompt_token_ids: list[int], params: SamplingParams, request_id: str
    ) -> AsyncIterator[RequestOutput]:
        """The engine's outputs for one request; closing the returned iterator aborts the request.

        Raises at once (before any output, so a stream has not started): 503 when not ready or when the waiting
        queue is full (with Retry-After), 400 for ``n`` above ``--max-n``. While iterating: 400 for the engine's
        ``ValueError`` (validation) and 503 when the engine died.
        """
        engine = self.require_engine()
        self.admission.check_n(params.n)
        admission = self.admission.admit(params.n)
        return self._generate(engine, prompt, prompt_token_ids, params, request_id, admission)

    async def _generate(
        self,
        engine: EngineClient,
        prompt: str | None,
        prompt_token_ids: list[int],
        params: SamplingParams,
        request_id: str,
        admission: Admission,
    ) -> AsyncIterator[RequestOutput]:
        if self.args.enable_log_requests:
            logger.info(
                "Received request %s: prompt=%r, prompt_token_ids=%s, params=%s",
                request_id,
                prompt,
                prompt_token_ids,
                params,
            )
        self.inflight.add(request_id)
        finished = False
        stream: Any = None
        try:
            stream = engine.generate(prompt, prompt_token_ids, params, request_id)
            async for out in stream:
                finished = out.finished
                yield out
        except asyncio.CancelledError:
            if request_id not in self._server_aborted:
                raise
            # Aborted by drain(): the engine ends the stream with CancelledError; report finish_reason "abort".
            finished = True
            yield _aborted_output(request_id, prompt, prompt_token_ids, params.n)
        except ValueError as e:
            finished = True  # refused by validation: nothing to abort
            raise from_value_error(e, _PARAM_NAMES) from None
        except APIError:
            raise
        except Exception as e:
            if engine.errored:
                raise APIError(503, "The engine stopped unexpectedly; the server must be restarted.") from e
            raise
        finally:
            admission.release()
            self.inflight.discard(request_id)
            self._server_aborted.discard(request_id)
            if self.args.enable_log_requests:
                logger.info("Finished request %s", request_id)
            if not finished and stream is not None:
                await stream.aclose()  # type: ignore[attr-defined]  # the engine aborts a request closed early


def _aborted_output(
    request_id: str, prompt: str | None, prompt_token_ids: list[int], n: int
) -> RequestOutput:
    outputs = [CompletionOutput(i, "", [], None, None, finish_reason="abort") for i in range(n)]
    return RequestOutput(request_id, prompt, prompt_token_ids, None, outputs, finished=True)
