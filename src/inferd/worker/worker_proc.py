"""A tensor-parallel worker process (ranks 1..N-1), started by ``MultiprocExecutor`` as
``python -m inferd.worker.worker_proc`` with (socket address, authkey, log level) pickled on stdin.

It connects to the driver, receives (EngineConfig, rank, world size, init method), joins the process group, builds
its ModelRunner and then runs every ``(method, args)`` the driver sends until ``shutdown`` or the driver is gone.
Any error is logged and ends the process with exit code 1 (the driver's monitor then stops the engine).
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
import threading
import time
from multiprocessing.connection import Client

logger = logging.getLogger("inferd.worker.worker_proc")


def _exit_when_orphaned(parent: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(1)


def main() -> int:
    address, authkey, log_level = pickle.loads(sys.stdin.buffer.read())
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s [tp worker] %(name)s: %(message)s")
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()
    conn = Client(address, family="AF_UNIX", authkey=authkey)
    conn.send(os.getpid())
    config, rank, world_size, init_method = conn.recv()
    try:
        import torch

        from inferd.distributed.parallel_state import destroy_tensor_parallel, init_tensor_parallel
        from inferd.worker.model_runner import ModelRunner

        device_type = config.device_config.device
        device = torch.device(f"cuda:{rank}") if device_type == "cuda" else torch.device("cpu")
        init_tensor_parallel(
            rank,
            world_size,
            init_method,
            device,
            custom_all_reduce=not config.parallel_config.disable_custom_all_reduce,
        )
        runner = ModelRunner(config, rank=rank)
        while True:
            try:
                method, args = pickle.loads(conn.recv_bytes())
            except (EOFError, OSError):
                return 0
            if method == "shutdown":  # every rank leaves the group together (NCCL may hang otherwise)
                destroy_tensor_parallel()
                return 0
            getattr(runner, method)(*args)
    except Exception:
        logger.exception("Tensor-parallel worker rank %d failed", rank)
        return 1


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
