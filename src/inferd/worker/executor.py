"""Executors: how the engine core reaches its model runner(s).

``UniprocExecutor`` holds one ModelRunner in this process. ``MultiprocExecutor`` (tensor parallelism) holds rank 0's
runner here and starts one worker process per other rank (``python -m inferd.worker.worker_proc``); every call is
sent to all ranks, which run it in lockstep (the layers' collectives pair them up), and rank 0's result is returned.

Driver → worker messages are pickled once per call and written to a Unix socket per worker in a private temporary
folder, which also holds the process group's file store: no ports or fixed names, so servers never collide.
A worker that dies stops this process (exit code 1) rather than leaving it blocked in a collective.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import pickle
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection, Listener
from typing import Any

from inferd.config import EngineConfig
from inferd.engine.scheduler_output import SchedulerOutput
from inferd.worker.model_runner import ModelRunner, PendingRound
from inferd.worker.model_runner_output import ModelRunnerOutput

logger = logging.getLogger(__name__)

_MIN_SHM_BYTES = 512 << 20
_START_TIMEOUT_S = 600.0


class UniprocExecutor:
    """One rank, in this process."""

    def __init__(self, config: EngineConfig) -> None:
        self.driver = ModelRunner(config)

    def collective_rpc(self, method: str, *args: Any) -> Any:
        """Call ``ModelRunner.<method>(*args)`` on every rank; rank 0's result."""
        return getattr(self.driver, method)(*args)

    def execute_model(self, so: SchedulerOutput, num_steps: int = 1) -> ModelRunnerOutput:
        return self.driver.execute_model(so, num_steps)

    def launch_model(
        self, so: SchedulerOutput, num_steps: int = 1, continues: PendingRound | None = None
    ) -> PendingRound:
        return self.driver.launch_model(so, num_steps, continues)

    def shutdown(self) -> None:
        pass


def check_shm(path: str = "/dev/shm", min_bytes: int = _MIN_SHM_BYTES) -> None:
    """Raise ValueError when the shared-memory mount NCCL needs between GPU processes is too small."""
    try:
        total = shutil.disk_usage(path).total
    except OSError:
        return
    if total < min_bytes:
        raise ValueError(
            f"{path} holds only {total / 2**20:.0f} MiB, too little for the GPU worker processes of "
            f"tensor parallelism (NCCL needs at least {min_bytes >> 20} MiB). Run the container with --ipc=host "
            "or --shm-size=16g (docker and podman alike; in Kubernetes mount an emptyDir with medium: Memory on "
            "/dev/shm), or use --tensor-parallel-size 1."
        )


class MultiprocExecutor:
    """Tensor parallelism: rank 0 here, ranks 1..N-1 in worker processes."""

    def __init__(self, config: EngineConfig) -> None:
        from inferd.distributed.parallel_state import init_tensor_parallel

        self.world_size = config.parallel_config.tensor_parallel_size
        device_type = config.device_config.device
        if device_type == "cuda":
            check_shm()
        self._closing = False
        self._dir = tempfile.mkdtemp(prefix="inferd-tp-")
        self._procs: list[subprocess.Popen[bytes]] = []
        self._conns: list[Connection] = []
        atexit.register(self.shutdown)
        init_method = f"file://{self._dir}/store"
        try:
            self._start_workers(config, init_method)
        except BaseException:
            self.shutdown()
            raise
        self._monitor = threading.Thread(target=self._watch_workers, name="inferd-tp-monitor", daemon=True)
        self._monitor.start()
        init_tensor_parallel(
            0,
            self.world_size,
            init_method,
            _device(device_type, 0),
            custom_all_reduce=not config.parallel_config.disable_custom_all_reduce,
        )
        self.driver = ModelRunner(config, rank=0)

    def _start_workers(self, config: EngineConfig, init_method: str) -> None:
        authkey = secrets.token_bytes(32)
        address = os.path.join(self._dir, "driver.sock")
        listener = Listener(address=address, family="AF_UNIX", authkey=authkey)
        try:
            for _ in range(1, self.world_size):
                proc = subprocess.Popen(
                    [sys.executable, "-m", "inferd.worker.worker_proc"],
                    stdin=subprocess.PIPE,
                )
                assert proc.stdin is not None
                proc.stdin.write(
                    pickle.dumps((address, authkey, logging.getLogger("inferd").getEffectiveLevel()))
                )
                proc.stdin.close()
                self._procs.append(proc)
            accepted: dict[int, Connection] = {}
            error: list[BaseException] = []

            def accept() -> None:
                try:
                    for _ in range(1, self.world_size):
                        conn = listener.accept()
                        accepted[conn.recv()] = conn
                except BaseException as e:  # pragma: no cover - reported below
                    error.append(e)

            acceptor = threading.Thread(target=accept, name="inferd-tp-accept", daemon=True)
            acceptor.start()
            deadline = time.monotonic() + _START_TIMEOUT_S
            while acceptor.is_alive():
                acceptor.join(0.1)
                self._raise_if_worker_died("while starting")
                if time.monotonic() > deadline:
                    raise RuntimeError("Tensor-parallel workers did not connect within 600 s.")
            if error:
                raise RuntimeError(f"Tensor-parallel workers failed to connect: {error[0]!r}")
        finally:
            listener.close()
        pids = {rank: proc.pid for rank, proc in enumerate(self._procs, start=1)}
        for rank in range(1, self.world_size):
            conn = accepted[pids[rank]]
            conn.send((config, rank, self.world_size, init_method))
            self._conns.append(conn)

    def _raise_if_worker_died(self, when: str) -> None:
        for rank, proc in enumerate(self._procs, start=1):
            code = proc.poll()
            if code is not None:
                raise RuntimeError(
                    f"Tensor-parallel worker rank {rank} exited {when} (exit code {code}); its log above says why."
                )

    def _watch_workers(self) -> None:
        while not self._closing:
            for rank, proc in enumerate(self._procs, start=1):
                code = proc.poll()
                if code is not None and not self._closing:
                    logger.error(
                        "Tensor-parallel worker rank %d exited (code %s); stopping the engine.", rank, code
                    )
                    self._kill_workers()
                    os._exit(1)
            time.sleep(0.2)

    def collective_rpc(self, method: str, *args: Any) -> Any:
        """Call ``ModelRunner.<method>(*args)`` on every rank (workers first, then rank 0); rank 0's result."""
        self._send_to_workers(method, *args)
        return getattr(self.driver, method)(*args)

    def execute_model(self, so: SchedulerOutput, num_steps: int = 1) -> ModelRunnerOutput:
        return self.collective_rpc("execute_model", so, num_steps)

    def launch_model(
        self, so: SchedulerOutput, num_steps: int = 1, continues: PendingRound | None = None
    ) -> PendingRound:
        """Launch on every rank: the workers queue the round (``ModelRunner.launch_queued``), rank 0's is
        returned; its ``result()`` also tells the workers to resolve theirs (rounds resolve in launch order)."""
        self._send_to_workers("launch_queued", so, num_steps, continues is not None)
        launched = self.driver.launch_model(so, num_steps, continues)
        launched.before_result = functools.partial(self._send_to_workers, "resolve_queued")
        return launched

    def _send_to_workers(self, method: str, *args: Any) -> None:
        data = pickle.dumps((method, args), protocol=pickle.HIGHEST_PROTOCOL)
        for conn in self._conns:
            conn.send_bytes(data)

    def _kill_workers(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()

    def shutdown(self) -> None:
        """Stop the workers and remove the private folder; safe to call more than once."""
        if self._closing:
            return
        self._closing = True
        for conn in self._conns:
            try:
                conn.send_bytes(pickle.dumps(("shutdown", ())))
                conn.close()
            except OSError:
                pass
        from inferd.distributed.parallel_state import destroy_tensor_parallel

        # The workers leave the group at the same time; never wait on it for long (a dead peer may block it).
        leaver = threading.Thread(target=destroy_tensor_parallel, name="inferd-tp-destroy", daemon=True)
        leaver.start()
        deadline = time.monotonic() + 10.0
        for proc in self._procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        leaver.join(max(0.1, deadline - time.monotonic()))
        if leaver.is_alive():
            logger.warning("Leaving the tensor-parallel process group timed out; going on.")
        shutil.rmtree(self._dir, ignore_errors=True)


def _device(device_type: str, rank: int) -> Any:
    import torch

    return torch.device(f"cuda:{rank}") if device_type == "cuda" else torch.device("cpu")


def make_executor(config: EngineConfig) -> UniprocExecutor | MultiprocExecutor:
    if config.parallel_config.tensor_parallel_size > 1:
        return MultiprocExecutor(config)
    return UniprocExecutor(config)
