"""The engine core in its own process, and the frontend's handle on it.

Messages (pickled over two one-way pipes):
  frontend → core: ("add", EngineCoreRequest) | ("abort", [req_id, ...]) | ("shutdown", None)
  core → frontend: ("ready", info) | ("outputs", EngineCoreOutputs) | ("error", message)
The frontend never blocks its event loop: a sender thread writes requests, a receiver thread reads outputs.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from inferd.config import EngineArgs, EngineConfig
from inferd.engine.core_types import EngineCoreOutput, EngineCoreOutputs, EngineCoreRequest

logger = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    """The engine-core process exited or failed; the server cannot serve requests any more."""


def run_engine_core(
    config: EngineConfig | EngineArgs,
    in_conn: Connection,
    out_conn: Connection,
    log_level: int,
    env: dict[str, str] | None = None,
    launched_at: float | None = None,
) -> None:
    """Entry point of the engine-core process; resolves EngineArgs itself when given them.

    ``env`` is applied to ``os.environ`` first, before anything initialises CUDA (a data-parallel replica's
    ``CUDA_VISIBLE_DEVICES``, or ``OMP_NUM_THREADS`` for its share of the CPU cores).
    """
    if env:
        os.environ.update(env)
    tag = multiprocessing.current_process().name.removeprefix("inferd-engine-")
    logging.basicConfig(level=log_level, format=f"%(asctime)s %(levelname)s [{tag}] %(name)s: %(message)s")
    parent = os.getppid()
    warmup = None
    if isinstance(config, EngineArgs):
        # Compile the first start's Triton kernels in side processes while this one imports and resolves the config.
        from inferd.worker import kernel_warmup

        warmup = kernel_warmup.start(config)
    try:
        if env and "OMP_NUM_THREADS" in env:
            import torch

            torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
        from inferd.engine.engine_core import EngineCore

        if launched_at is not None:
            logger.info("Engine process up, imports done %.1f s after launch", time.time() - launched_at)
        if isinstance(config, EngineArgs):
            config = config.create_engine_config()
        core = EngineCore(config, kernel_warmup=warmup)
    except Exception as e:  # report load failures (bad weights, too little memory) to the frontend
        for proc in warmup or []:
            proc.kill()
        out_conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    try:
        out_conn.send(("ready", {"num_blocks": core.num_blocks}))
        while True:
            if not core.has_unfinished_requests():
                while not in_conn.poll(1.0):
                    if os.getppid() != parent:  # the frontend is gone
                        return
            changed = False
            while in_conn.poll():
                kind, payload = in_conn.recv()
                if kind == "shutdown":
                    return
                changed = True
                if kind == "add":
                    try:
                        core.add_request(payload)
                    except ValueError as e:
                        logger.warning("Request %s refused: %s", payload.req_id, e)
                        out_conn.send(
                            (
                                "outputs",
                                EngineCoreOutputs(
                                    [EngineCoreOutput(payload.req_id, [], finish_reason="abort")]
                                ),
                            )
                        )
                elif kind == "abort":
                    core.abort_requests(payload)
            if core.has_unfinished_requests():
                outputs = core.step()
                if outputs.outputs or outputs.scheduler_stats is not None:
                    out_conn.send(("outputs", outputs))
            elif changed:
                out_conn.send(("outputs", EngineCoreOutputs([], core.scheduler.make_stats())))
    except (BrokenPipeError, EOFError):
        return
    except Exception:
        out_conn.send(("error", traceback.format_exc()))
        raise
    finally:
        core.shutdown()


class EngineCoreClient:
    """Starts the engine-core process and exchanges messages with it from any thread.

    ``env`` holds environment variables for that process only (see :func:`run_engine_core`).
    """

    def __init__(
        self,
        config: EngineConfig | EngineArgs,
        env: dict[str, str] | None = None,
        name: str = "inferd-engine-core",
    ) -> None:
        ctx = multiprocessing.get_context("spawn")
        core_in_recv, self._in_send = ctx.Pipe(duplex=False)
        self._out_recv, core_out_send = ctx.Pipe(duplex=False)
        self.process = ctx.Process(
            target=run_engine_core,
            args=(
                config,
                core_in_recv,
                core_out_send,
                logging.getLogger("inferd").getEffectiveLevel(),
                env,
                time.time(),
            ),
            name=name,
            daemon=True,
        )
        self.process.start()
        core_in_recv.close()
        core_out_send.close()
        self._send_queue: queue.SimpleQueue[tuple[str, Any] | None] = queue.SimpleQueue()
        self._sender = threading.Thread(target=self._send_loop, name="inferd-core-sender", daemon=True)
        self._receiver: threading.Thread | None = None
        self.dead = False
        self.error: str | None = None
        self._closing = False

    def wait_ready(self) -> dict[str, Any]:
        """Block until the core has loaded the model; raises ValueError/EngineDeadError if it could not."""
        try:
            kind, payload = self._out_recv.recv()
        except EOFError:
            self.dead = True
            raise EngineDeadError(
                f"The engine process exited during start-up (exit code {self.process.exitcode})."
            ) from None
        if kind == "error":
            self.dead = True
            self.process.join(timeout=5)
            raise ValueError(f"The engine failed to start: {payload}")
        self._sender.start()
        return payload

    def start_output_thread(
        self, on_outputs: Callable[[EngineCoreOutputs], None], on_dead: Callable[[str], None]
    ) -> None:
        def loop() -> None:
            while True:
                try:
                    kind, payload = self._out_recv.recv()
                except (EOFError, OSError):
                    if not self.dead and not self._closing:
                        self.dead = True
                        self.error = self.error or f"engine process exited (code {self.process.exitcode})"
                        on_dead(self.error)
                    return
                if kind == "outputs":
                    on_outputs(payload)
                elif kind == "error" and not self._closing:
                    self.dead = True
                    self.error = payload
                    logger.error("Engine core failed:\n%s", payload)
                    on_dead(payload)
                    return

        self._receiver = threading.Thread(target=loop, name="inferd-core-receiver", daemon=True)
        self._receiver.start()

    def _send_loop(self) -> None:
        while True:
            msg = self._send_queue.get()
            if msg is None:
                return
            try:
                self._in_send.send(msg)
            except (BrokenPipeError, OSError):
                return

    def is_alive(self) -> bool:
        return self.process.is_alive()

    def add_request(self, request: EngineCoreRequest) -> None:
        self._send_queue.put(("add", request))

    def add_requests(self, requests: list[EngineCoreRequest]) -> None:
        """The core requests of one user request (its n children)."""
        for request in requests:
            self._send_queue.put(("add", request))

    def abort_requests(self, req_ids: list[str]) -> None:
        if req_ids:
            self._send_queue.put(("abort", list(req_ids)))

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop the process: ask it to exit (once ready), else terminate it; its exit is not reported as a death."""
        self._closing = True
        if self.process.is_alive():
            if self._sender.is_alive():
                self._send_queue.put(("shutdown", None))
                self._send_queue.put(None)
                self.process.join(timeout)
            if self.process.is_alive():
                self.process.terminate()
                self.process.join(timeout)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(timeout)
        self.dead = True
