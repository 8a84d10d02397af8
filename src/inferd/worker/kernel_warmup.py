"""First-start Triton compilation in a side process, while the engine process resolves its config.

On a fresh machine an engine spends seconds importing torch and resolving the model config (~9 s more when
transformers resolves it: configs ``models/native_config.py`` does not read) and then ~10 s compiling Triton kernels
(memory profile and CUDA-graph capture), one after the other. The compilation only depends on the
model's shapes, which ``config.json`` states plainly, so the engine process starts two warm-up processes first:
each builds a one-layer copy of the model from the raw ``config.json`` (no transformers import) with dummy weights;
one runs the memory profile's prefill batch, the others each decode-graph bucket's forward, eagerly (all buckets in
one process, or in three groups of buckets that compile different kernels where the machine has the cores); then
they exit. Triton writes
every kernel it compiles to its on-disk cache, where the engine finds them. The engine waits for this process to
exit before its memory profile (so the profile sees only its own memory), and kills them if they take too long.

It is only an optimisation: any failure here (an unusual config, too little memory) just leaves the cache as it
was, and the engine compiles what it needs itself. ``INFERD_KERNEL_WARMUP=0`` turns it off; it runs only for a
single engine on one CUDA GPU (no tensor or data parallelism) and a model whose ``config.json`` is on this machine
already. The engine logs how long each process ran; ``INFERD_KERNEL_WARMUP=debug`` also lets the processes print
when each of their phases ended (torch imported, model built, each bucket). A process that is done exits at once,
without the interpreter's and CUDA's teardown.

    python -m inferd.worker.kernel_warmup '<json spec>'   (started by :func:`start`)
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from typing import Any

from inferd.config import EngineArgs
from inferd.models.native_config import NativeConfig

logger = logging.getLogger(__name__)

_MAX_WEIGHT_SHARE = 0.5  # no warm-up when the weights take more than this share of the GPU (the two processes
# share the GPU while the engine loads its weights)


def _local_config_json(args: EngineArgs) -> str | None:
    """config.json of the model if it is on this machine already (a folder, or the hub cache), without network."""
    if os.path.isdir(args.model):
        path = os.path.join(args.model, "config.json")
        return path if os.path.isfile(path) else None
    if args.model.endswith(".gguf") or os.path.exists(args.model):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(
            args.model, "config.json", cache_dir=args.download_dir, revision=args.revision
        )
    except Exception:  # not a hub id, bad revision, ...
        return None
    return found if isinstance(found, str) else None


def _nvidia_gpu_visible() -> bool:
    """A cheap check before torch is imported: the NVIDIA driver's device node, and CUDA_VISIBLE_DEVICES not empty."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    return os.path.exists("/dev/nvidiactl")


def spec_for(args: EngineArgs) -> dict[str, Any] | None:
    """What the warm-up process needs, or None when it would not help (or could get in the way)."""
    if os.environ.get("INFERD_KERNEL_WARMUP", "1") == "0":
        return None
    if args.tensor_parallel_size != 1 or args.data_parallel_size != 1 or args.device == "cpu":
        return None  # (data parallel: every replica would compile the same kernels at once)
    if args.trust_remote_code or not _nvidia_gpu_visible():
        return None
    config_json = _local_config_json(args)
    if config_json is None:
        return None
    return {
        "config_json": config_json,
        "dtype": args.dtype,
        "max_model_len": args.max_model_len,
        "block_size": args.block_size,
        "max_num_seqs": args.max_num_seqs,
        "max_num_batched_tokens": args.max_num_batched_tokens or 8192,
        "enforce_eager": args.enforce_eager,
        "seed": args.seed,
    }


# The decode-graph buckets by the kernel variants they compile: batch 1 (the skinny GEMM's FMA path), 2-16 (its
# tensor-core path; both with PDL: pdl.MAX_GRAPH_BATCH), larger (no PDL; cuBLAS above 16 rows). Given enough cores,
# each group is compiled by a process of its own; with more, the slowest groups are split further: 2-16 and 17+
# each compile ~6 s of kernels serially (benchmarks/results/run-s6-3), so 9-16 (the 16-row GEMV tiles) and 17-32
# (the split attention without PDL) get their own processes.
_DECODE_GROUPS = ((1, 1), (2, 16), (17, 1 << 30))
_DECODE_GROUPS_MANY_CPUS = ((1, 1), (2, 8), (9, 16), (17, 32), (33, 1 << 30))
_MIN_CPUS_FOR_GROUPS = 8
_MIN_CPUS_FOR_MORE_GROUPS = 12


def parts(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """What each warm-up process compiles (merged into its spec): the memory profile's prefill kernels, and the
    decode-graph buckets' kernels — in one process, or one per :data:`_DECODE_GROUPS` group on machines with at
    least ``_MIN_CPUS_FOR_GROUPS`` cores (:data:`_DECODE_GROUPS_MANY_CPUS` from ``_MIN_CPUS_FOR_MORE_GROUPS``).
    All run side by side."""
    out: list[dict[str, Any]] = [{"part": "prefill"}]
    if spec["enforce_eager"]:
        return out
    cpus = os.cpu_count() or 1
    if cpus < _MIN_CPUS_FOR_GROUPS:
        return [*out, {"part": "decode"}]
    groups = _DECODE_GROUPS_MANY_CPUS if cpus >= _MIN_CPUS_FOR_MORE_GROUPS else _DECODE_GROUPS
    return [*out, *({"part": "decode", "buckets": list(group)} for group in groups)]


def start(args: EngineArgs) -> list[subprocess.Popen[bytes]] | None:
    """Start the warm-up processes for ``args`` (one per entry of :func:`parts`, compiling in parallel; see the
    module docstring); None when the warm-up does not apply. ``INFERD_KERNEL_WARMUP=debug`` lets them print to
    this process's stdout/stderr, with the time each phase ended."""
    spec = spec_for(args)
    if spec is None:
        return None
    debug = os.environ.get("INFERD_KERNEL_WARMUP") == "debug"
    out = None if debug else subprocess.DEVNULL
    procs = []
    for part in parts(spec):
        try:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "inferd.worker.kernel_warmup",
                    json.dumps({**spec, **part, "launched": time.time()}),
                ],
                stdout=out,
                stderr=out,
            )
        except OSError:
            break
        procs.append(proc)
    return procs or None


def _label(part: dict[str, Any]) -> str:
    buckets = part.get("buckets")
    if not buckets:
        return str(part["part"])
    low, high = buckets
    return f"{part['part']} {low}" + ("" if high == low else f"-{high}" if high < 1 << 30 else "+")


def finish(procs: list[subprocess.Popen[bytes]] | None, timeout: float = 120.0) -> None:
    """Wait for the warm-up processes to exit (killing them ``timeout`` seconds after this call); logs how long
    each ran."""
    if not procs:
        return
    start_time = time.time()
    ended: dict[int, float] = {}
    while len(ended) < len(procs):
        now = time.time()
        for proc in procs:
            if proc.pid not in ended and proc.poll() is not None:
                ended[proc.pid] = now
        if len(ended) < len(procs) and now - start_time > timeout:
            for proc in procs:
                if proc.pid not in ended:
                    proc.kill()
                    proc.wait()
                    ended[proc.pid] = now
        time.sleep(0.005)
    runs = []
    for proc in procs:
        spec = _spec_of(proc)
        ran = ended[proc.pid] - spec.get("launched", start_time)
        runs.append(f"{_label(spec) if 'part' in spec else '?'} {ran:.1f} s (exit {proc.returncode})")
    logger.info(
        "Kernel warm-up processes done after %.1f s more: %s",
        time.time() - start_time,
        ", ".join(runs),
    )


def _spec_of(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    """The spec a process of :func:`start` was given (its last argument), or {} for any other process."""
    try:
        spec = json.loads(proc.args[-1])  # type: ignore[index]
    except (TypeError, ValueError, IndexError):
        return {}
    return spec if isinstance(spec, dict) else {}


def _one_layer_config(raw: dict[str, Any]) -> NativeConfig:
    cfg = NativeConfig(raw)
    cfg.num_hidden_layers = 1
    if isinstance(getattr(cfg, "layer_types", None), list):
        cfg.layer_types = cfg.layer_types[:1]
    return cfg


def _mark(spec: dict[str, Any], what: str) -> None:
    """With ``INFERD_KERNEL_WARMUP=debug``: print when a phase of this warm-up process ended."""
    if os.environ.get("INFERD_KERNEL_WARMUP") == "debug":
        since = time.time() - spec.get("launched", time.time())
        print(
            f"kernel warm-up {_label(spec)}: {what} {since:.1f} s after launch", file=sys.stderr, flush=True
        )


def run(spec: dict[str, Any]) -> None:
    """Compile what the engine's memory profile and graph capture will compile (same shapes, one layer)."""
    import torch

    _mark(spec, "torch imported")

    from inferd.config import (
        CacheConfig,
        DeviceConfig,
        EngineConfig,
        ModelConfig,
        ParallelConfig,
        SchedulerConfig,
        _derive_max_model_len,
    )
    from inferd.models.source import ModelSource, _checkpoint_dtype
    from inferd.worker.cuda_graph import CudaGraphRunner
    from inferd.worker.memory_profiler import run_dummy_batch
    from inferd.worker.model_runner import ModelRunner

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not spec.get("run_on_cpu"):  # nothing to compile; the tests run it on CPU
        return
    with open(spec["config_json"], encoding="utf-8") as f:
        raw = json.load(f)
    hf_config = _one_layer_config(raw)
    args = EngineArgs(model=os.path.dirname(spec["config_json"]), dtype=spec["dtype"])
    dtype = args._resolve_dtype(_checkpoint_dtype(raw), device)
    if device == "cuda" and not _fits(raw, dtype, torch.cuda.mem_get_info()[1]):
        return
    max_model_len = spec["max_model_len"] or _derive_max_model_len(hf_config)
    source = ModelSource(
        model=args.model,
        path=args.model,
        load_format="dummy",
        hf_config=hf_config,
        checkpoint_dtype=dtype,
        gguf_file=None,
        tokenizer=None,
        revision=None,
        tokenizer_revision=None,
        download_dir=None,
        generation_config={},
    )
    max_num_seqs = spec["max_num_seqs"]
    num_tokens = spec["max_num_batched_tokens"]
    config = EngineConfig(
        model_config=ModelConfig(
            model=args.model,
            source=source,
            dtype=dtype,
            max_model_len=max_model_len,
            seed=spec["seed"],
            load_format="dummy",
            generation_config="auto",
            served_model_names=(args.model,),
            max_logprobs=20,
            trust_remote_code=False,
        ),
        cache_config=CacheConfig(block_size=spec["block_size"]),
        scheduler_config=SchedulerConfig(
            max_num_seqs=max_num_seqs, max_num_batched_tokens=num_tokens, max_model_len=max_model_len
        ),
        parallel_config=ParallelConfig(),
        device_config=DeviceConfig(device=device),
        enforce_eager=spec["enforce_eager"] or device == "cpu",
    )
    part = spec.get("part", "all")
    with torch.inference_mode():
        runner = ModelRunner(config)
        _mark(spec, "one-layer model built")
        if part in ("prefill", "all"):
            num_seqs = max(1, min(max_num_seqs, num_tokens))
            run_dummy_batch(runner, num_tokens, num_seqs, num_tokens // runner.block_size + num_seqs + 1)
            _mark(spec, "prefill batch queued")
        if config.enforce_eager or part == "prefill":
            return
        runner.initialize_kv_cache(2)  # graph warm-ups write no KV (padding slots) and read block 0 only
        graphs = CudaGraphRunner(runner.model, max_num_seqs, max_model_len, runner.block_size, runner.device)
        low, high = spec.get("buckets") or (1, max_num_seqs)
        for bs in reversed(graphs.buckets):
            if low <= bs <= high:
                for ctx in graphs.contexts(bs):
                    graphs.forward_eagerly(bs, ctx)
                _mark(spec, f"bucket {bs} done")
        torch.cuda.synchronize()


def _fits(raw: dict[str, Any], dtype: str, total_bytes: int) -> bool:
    """Whether the full model's weights leave room for this process next to the engine (a rough count)."""
    h = int(raw.get("hidden_size") or 0)
    inter = int(raw.get("intermediate_size") or 0)
    layers = int(raw.get("num_hidden_layers") or 0)
    vocab = int(raw.get("vocab_size") or 0)
    params = layers * (4 * h * h + 3 * h * inter) + 2 * vocab * h
    elem = 4 if dtype == "float32" else 2
    return params * elem <= _MAX_WEIGHT_SHARE * total_bytes


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    spec = json.loads(sys.argv[1])
    try:
        run(spec)
    except Exception as e:  # an optimisation only: the engine compiles whatever is missing itself
        print(f"kernel warm-up skipped: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
    _mark(spec, "done")
    # Every kernel is compiled and in Triton's on-disk cache by now (compilation happens at launch, on the host):
    # skip the interpreter's and CUDA's orderly teardown (0.5-1 s measured), which the engine would wait for.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
