"""Data parallelism: N engine-core replicas (processes) behind one frontend.

``DPEngineCoreClient`` has ``EngineCoreClient``'s interface. Each user request goes, with all its n children, to
the replica with the fewest unfinished core requests (counted here: +1 on add, -1 on a finished output or an abort;
ties go to the lowest index); aborts go to the replica that owns the request; every replica's outputs reach one
``on_outputs``; the first replica to die calls ``on_dead`` once and the others are shut down.

Replica i of N sees GPUs ``[i * tp, (i + 1) * tp)`` of the frontend's visible devices, as its own
``CUDA_VISIBLE_DEVICES`` (so inside a replica they are ``cuda:0 .. tp-1``); on the CPU each replica gets an equal
share of the cores (``OMP_NUM_THREADS``) unless the user set it.

``SyncDPClient`` drives the same client from one thread for the offline ``LLMEngine``.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Protocol

from inferd.config import EngineArgs, EngineConfig
from inferd.engine.core_client import EngineCoreClient, EngineDeadError
from inferd.engine.core_types import EngineCoreOutputs, EngineCoreRequest, SchedulerStats

logger = logging.getLogger(__name__)


class ReplicaClient(Protocol):
    """What the data-parallel client needs of one replica (an ``EngineCoreClient``, or a fake in tests)."""

    dead: bool
    error: str | None

    def wait_ready(self) -> dict[str, Any]: ...

    def start_output_thread(
        self, on_outputs: Callable[[EngineCoreOutputs], None], on_dead: Callable[[str], None]
    ) -> None: ...

    def add_request(self, request: EngineCoreRequest) -> None: ...

    def abort_requests(self, req_ids: list[str]) -> None: ...

    def is_alive(self) -> bool: ...

    def shutdown(self, timeout: float = 5.0) -> None: ...


@dataclass(slots=True)
class DPSchedulerStats(SchedulerStats):
    """Stats summed over the replicas (``kv_cache_usage``: their mean); ``engines`` holds each replica's latest."""

    engines: list[SchedulerStats] = field(default_factory=list)


def aggregate_stats(per_engine: Sequence[SchedulerStats | None]) -> DPSchedulerStats:
    """Sum of counts, mean KV usage; a replica that has not reported yet counts as idle."""
    engines = [s if s is not None else SchedulerStats() for s in per_engine]
    return DPSchedulerStats(
        num_running_reqs=sum(s.num_running_reqs for s in engines),
        num_waiting_reqs=sum(s.num_waiting_reqs for s in engines),
        kv_cache_usage=sum(s.kv_cache_usage for s in engines) / max(1, len(engines)),
        prefix_cache_queries=sum(s.prefix_cache_queries for s in engines),
        prefix_cache_hits=sum(s.prefix_cache_hits for s in engines),
        num_preemptions=sum(s.num_preemptions for s in engines),
        engines=engines,
    )


def replica_envs(
    device: str, tensor_parallel_size: int, data_parallel_size: int, visible: Sequence[str] | None = None
) -> list[dict[str, str]]:
    """The environment of each replica's engine-core process.

    On CUDA ``visible`` is the frontend's device list (its ``CUDA_VISIBLE_DEVICES`` entries, else ``0..count-1``);
    raises ValueError when it holds fewer than tp * dp devices. With dp == 1 nothing is set.
    """
    tp, dp = tensor_parallel_size, data_parallel_size
    if dp == 1:
        return [{}]
    if device == "cuda":
        devices = list(visible or [])
        if tp * dp > len(devices):
            raise ValueError(
                f"--data-parallel-size {dp} × --tensor-parallel-size {tp} needs {tp * dp} GPUs but "
                f"{len(devices)} are visible; lower --data-parallel-size or --tensor-parallel-size."
            )
        return [{"CUDA_VISIBLE_DEVICES": ",".join(devices[i * tp : (i + 1) * tp])} for i in range(dp)]
    if "OMP_NUM_THREADS" in os.environ:
        return [{} for _ in range(dp)]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return [{"OMP_NUM_THREADS": str(max(1, cores // dp))} for _ in range(dp)]


def visible_cuda_devices() -> list[str]:
    """The frontend's CUDA devices: its ``CUDA_VISIBLE_DEVICES`` entries (as many as CUDA sees), else 0..count-1."""
    import torch

    count = torch.cuda.device_count()
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is None:
        return [str(i) for i in range(count)]
    return [d.strip() for d in env.split(",") if d.strip()][:count]


class DPEngineCoreClient:
    """N replicas behind ``EngineCoreClient``'s interface; thread-safe. Use :meth:`start` for real processes."""

    def __init__(self, clients: Sequence[ReplicaClient]) -> None:
        if not clients:
            raise ValueError("A data-parallel client needs at least one replica.")
        self.clients = list(clients)
        n = len(self.clients)
        self.num_unfinished = [0] * n  # core requests in flight per replica
        self.num_routed = [0] * n  # core requests ever sent per replica
        self.error: str | None = None
        self._owner: dict[str, int] = {}
        self._stats: list[SchedulerStats | None] = [None] * n
        self._lock = threading.Lock()
        self._dead = False
        self._closing = False

    @classmethod
    def start(cls, config: EngineArgs | EngineConfig) -> DPEngineCoreClient:
        """Start one engine-core process per replica (not yet ready: call :meth:`wait_ready`).

        Raises ValueError when the replicas need more GPUs than are visible.
        """
        if isinstance(config, EngineConfig):
            device = config.device_config.device
            tp = config.parallel_config.tensor_parallel_size
            dp = config.parallel_config.data_parallel_size
        else:
            device = config.resolve_device()
            tp, dp = config.tensor_parallel_size, config.data_parallel_size
        envs = replica_envs(device, tp, dp, visible_cuda_devices() if device == "cuda" else None)
        clients: list[ReplicaClient] = []
        try:
            for i, env in enumerate(envs):
                clients.append(EngineCoreClient(config, env=env, name=f"inferd-engine-core-dp{i}"))
        except BaseException:
            for client in clients:
                client.shutdown()
            raise
        if device == "cuda":
            logger.info("Data parallel: %s", "; ".join(f"replica {i}: GPUs {e}" for i, e in enumerate(envs)))
        return cls(clients)

    # ------------------------------------------------------------------ state
    @property
    def dead(self) -> bool:
        return self._dead or any(c.dead for c in self.clients)

    def is_alive(self) -> bool:
        return all(c.is_alive() for c in self.clients)

    # ------------------------------------------------------------------ lifecycle
    def wait_ready(self) -> dict[str, Any]:
        """Wait for every replica to load (they load in parallel); ``num_blocks`` is their sum.

        If one fails, all are shut down and its error (ValueError / EngineDeadError) is raised.
        """
        with ThreadPoolExecutor(len(self.clients), thread_name_prefix="inferd-dp-ready") as pool:
            futures = [pool.submit(c.wait_ready) for c in self.clients]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = next((f for f in futures if f in done and f.exception() is not None), None)
            if failed is not None:
                self.shutdown()
                failed.result()
            infos = [f.result() for f in futures]
        return {"num_blocks": sum(int(i.get("num_blocks", 0)) for i in infos), "engines": infos}

    def start_output_thread(
        self, on_outputs: Callable[[EngineCoreOutputs], None], on_dead: Callable[[str], None]
    ) -> None:
        """Every replica's outputs go to ``on_outputs`` (from its receiver thread), with ``scheduler_stats``
        replaced by the aggregate over replicas; the first death calls ``on_dead`` once."""
        for i, client in enumerate(self.clients):
            client.start_output_thread(
                lambda outputs, i=i: self._on_replica_outputs(i, outputs, on_outputs),
                lambda reason, i=i: self._on_replica_dead(i, reason, on_dead),
            )

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop every replica (in parallel); their exits are not reported as deaths."""
        self._closing = True
        threads = [threading.Thread(target=c.shutdown, args=(timeout,), daemon=True) for c in self.clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    # ------------------------------------------------------------------ requests
    def add_request(self, request: EngineCoreRequest) -> None:
        self.add_requests([request])

    def add_requests(self, requests: list[EngineCoreRequest]) -> None:
        """Send the core requests of one user request (its n children) to the least-loaded replica."""
        if not requests:
            return
        with self._lock:
            index = min(range(len(self.clients)), key=lambda i: (self.num_unfinished[i], i))
            for request in requests:
                self._owner[request.req_id] = index
            self.num_unfinished[index] += len(requests)
            self.num_routed[index] += len(requests)
            for request in requests:
                self.clients[index].add_request(request)

    def abort_requests(self, req_ids: list[str]) -> None:
        """Abort each request on the replica that owns it; ids not in flight are ignored."""
        by_replica: dict[int, list[str]] = {}
        with self._lock:
            for req_id in req_ids:
                index = self._owner.pop(req_id, None)
                if index is not None:
                    self.num_unfinished[index] -= 1
                    by_replica.setdefault(index, []).append(req_id)
            for index, ids in by_replica.items():
                self.clients[index].abort_requests(ids)

    # ------------------------------------------------------------------ receiver threads
    def _on_replica_outputs(
        self, index: int, outputs: EngineCoreOutputs, on_outputs: Callable[[EngineCoreOutputs], None]
    ) -> None:
        with self._lock:
            for out in outputs.outputs:
                if out.finish_reason is not None:
                    owner = self._owner.pop(out.req_id, None)
                    if owner is not None:
                        self.num_unfinished[owner] -= 1
            if outputs.scheduler_stats is not None:
                self._stats[index] = outputs.scheduler_stats
                outputs.scheduler_stats = aggregate_stats(self._stats)
        on_outputs(outputs)

    def _on_replica_dead(self, index: int, reason: str, on_dead: Callable[[str], None]) -> None:
        with self._lock:
            if self._dead or self._closing:
                return
            self._dead = True
            self.error = f"data-parallel replica {index}: {reason}"
        logger.error("Engine replica %d of %d died; stopping the others.", index, len(self.clients))
        on_dead(self.error)
        for i, client in enumerate(self.clients):
            if i != index:
                client.shutdown()


class SyncDPClient:
    """A data-parallel client driven from one thread, with ``EngineCore``'s calls for ``LLMEngine``.

    ``step()`` blocks until some replica has sent outputs and returns everything received by then as one
    ``EngineCoreOutputs``; it raises EngineDeadError once a replica died. The replicas are shut down by
    :meth:`shutdown`, when this object is garbage-collected, or at interpreter exit.
    """

    def __init__(self, client: DPEngineCoreClient) -> None:
        self.client = client
        self._queue: queue.SimpleQueue[EngineCoreOutputs | EngineDeadError] = queue.SimpleQueue()
        self._dead: EngineDeadError | None = None
        q = self._queue
        client.start_output_thread(q.put, lambda reason: q.put(EngineDeadError(f"The engine died: {reason}")))
        self._finalizer = weakref.finalize(self, client.shutdown)

    def add_request(self, request: EngineCoreRequest) -> None:
        self.client.add_requests([request])

    def add_requests(self, requests: list[EngineCoreRequest]) -> None:
        self.client.add_requests(requests)

    def abort_requests(self, req_ids: list[str]) -> None:
        self.client.abort_requests(req_ids)

    def step(self, poll_s: float = 0.5) -> EngineCoreOutputs:
        """Outputs of every replica received so far, waiting for at least one batch while any request is in
        flight (empty when none is)."""
        if self._dead is not None:
            raise self._dead
        merged = EngineCoreOutputs()
        while True:
            try:
                item = self._queue.get(timeout=poll_s)
                break
            except queue.Empty:
                if not any(self.client.num_unfinished) and self._queue.empty():
                    return merged
        while True:
            if isinstance(item, EngineDeadError):
                self._dead = item
                raise item
            merged.outputs.extend(item.outputs)
            if item.scheduler_stats is not None:
                merged.scheduler_stats = item.scheduler_stats
            merged.timestamp = max(merged.timestamp, item.timestamp)
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return merged

    def shutdown(self) -> None:
        self._finalizer()


def start_engine_client(engine_args: EngineArgs) -> EngineCoreClient | DPEngineCoreClient:
    """Start the engine-core process(es) for ``engine_args`` without waiting for them: one process, or one per
    data-parallel replica. Light to import (no torch), so a frontend can call it before its own heavy imports."""
    if engine_args.data_parallel_size > 1:
        return DPEngineCoreClient.start(engine_args)
    return EngineCoreClient(engine_args)
