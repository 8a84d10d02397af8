"""Where the GPU's time goes over the whole throughput workload, as the engine really runs it (asynchronous
scheduling, CUDA graphs, multi-step rounds): busy and idle time and kernel time by kind, per engine launch kind.

    python benchmarks/timeline_profile.py benchmarks/model-configs/qwen3-0.6b [--num-prompts 256] \\
        [--host-profile] [--output-json F]

First an unprofiled run of the workload records the host wall time of each ``launch_model`` call by kind (a
prefill-carrying step runs synchronously inside it, so that is its whole wall time; a decode round is only queued
there); ``--host-profile`` then cProfiles the prefill-carrying launches of a second run.

Every ``launch_model`` call (one prefill-carrying step, or one multi-step decode round) first enqueues a one-cycle
marker kernel (``torch.cuda._sleep``) on the engine's stream, so the device timeline that torch.profiler (CUPTI)
records can be cut into launches in order. Per launch kind ("prefill-carrying", "decode batch <= N"), summed over the
run: the device span (marker to next marker), the time some kernel ran (busy: the union of kernel intervals), the idle
rest, and kernel time by category. The profiler itself slows launches a little, so the spans are somewhat longer than
in an unprofiled run; the kernel times are not affected.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import re
import time
from collections import defaultdict
from typing import Any

import torch

from inferd import LLM, SamplingParams
from inferd.bench.datasets import random_requests

_CATEGORIES = (  # (category, regex on the kernel name), first match wins
    ("marker", r"spin_kernel"),
    ("attention", r"_paged_attention_kernel"),
    ("attention merge", r"_merge_splits_kernel"),
    ("gemv (triton)", r"_gemv_kernel"),
    ("gemm (cublas)", r"nvjet|gemm|cutlass|sm90_xmma|ampere|cublas"),
    ("norm", r"rms_norm|add_rms"),
    ("q/k norm + rope + kv store", r"qk_norm_rope|store_kv"),
    ("silu", r"silu"),
    ("sampling", r"race|pick|sampl|exponential|distribution|argmax|decode_advance|softmax|topk|sort"),
    ("embedding", r"embedding|index_select|indexSelect"),
    ("memcpy/memset", r"[Mm]emcpy|[Mm]emset"),
)


def category(name: str) -> str:
    for cat, pattern in _CATEGORIES:
        if re.search(pattern, name):
            return cat
    return "other"


def launch_kind(so: Any) -> str:
    counts = list(so.num_scheduled_tokens.values())
    if any(c > 1 for c in counts) or so.scheduled_new_reqs:
        return "prefill-carrying"
    bucket = 1 << max(0, (len(counts) - 1).bit_length())
    return f"decode batch <= {bucket:>3}"


def union_length(intervals: list[tuple[int, int]]) -> int:
    total, end = 0, -1
    for s, e in sorted(intervals):
        if s > end:
            total += e - s
            end = e
        elif e > end:
            total += e - end
            end = e
    return total


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--num-prompts", type=int, default=256)
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--output-json", default=None)
    p.add_argument("--host-profile", action="store_true", help="also cProfile the prefill-carrying launches")
    args = p.parse_args()
    # Prefix caching off: every pass runs the same prompts, and later passes must not find them cached.
    llm = LLM(
        args.model,
        load_format="dummy",
        dtype="bfloat16",
        max_model_len=args.max_model_len,
        enable_prefix_caching=False,
    )
    core = llm.llm_engine.engine_core
    vocab = llm.llm_engine.model_config.hf_config.vocab_size
    requests = random_requests(args.num_prompts, None, None, seed=0)
    prompts = [{"prompt_token_ids": [t % vocab for t in r.prompt_token_ids]} for r in requests]
    params = [
        SamplingParams(temperature=0.6, ignore_eos=True, max_tokens=r.max_tokens, detokenize=False)
        for r in requests
    ]
    llm.generate(prompts[:4], params[:4], use_tqdm=False)  # warm-up

    executor = core.executor
    original_launch = executor.launch_model

    # Pass 1, unprofiled: host wall time of every launch_model call by kind. A prefill-carrying step runs
    # synchronously inside it (its wall includes the device time); a decode round is only queued there.
    host: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])

    def timed_launch(so: Any, num_steps: int = 1, continues: Any = None) -> Any:
        start = time.perf_counter()
        out = original_launch(so, num_steps, continues)
        entry = host[launch_kind(so)]
        entry[0] += time.perf_counter() - start
        entry[1] += 1
        return out

    executor.launch_model = timed_launch  # type: ignore[method-assign]
    start = time.perf_counter()
    llm.generate(prompts, params, use_tqdm=False)
    unprofiled_s = time.perf_counter() - start

    # Pass 2: cProfile of the prefill-carrying launches only (where the host's time goes in them).
    prof_host = cProfile.Profile()

    def cprofiled_launch(so: Any, num_steps: int = 1, continues: Any = None) -> Any:
        if launch_kind(so) != "prefill-carrying":
            return original_launch(so, num_steps, continues)
        prof_host.enable()
        try:
            out = original_launch(so, num_steps, continues)
            torch.cuda.synchronize()
        finally:
            prof_host.disable()
        return out

    if args.host_profile:
        executor.launch_model = cprofiled_launch  # type: ignore[method-assign]
        llm.generate(prompts, params, use_tqdm=False)
        buf = io.StringIO()
        pstats.Stats(prof_host, stream=buf).sort_stats("tottime").print_stats(30)
        print("\n".join(line[:170] for line in buf.getvalue().splitlines()[:45]))

    # Pass 3: the device timeline under torch.profiler, cut into launches by the marker kernels.
    kinds: list[tuple[str, int, int]] = []  # (kind, sequences, steps) per launch, in launch order

    def launch(so: Any, num_steps: int = 1, continues: Any = None) -> Any:
        torch.cuda._sleep(1)
        kinds.append((launch_kind(so), len(so.num_scheduled_tokens), num_steps))
        return original_launch(so, num_steps, continues)

    executor.launch_model = launch  # type: ignore[method-assign]
    activities = [torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        start = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        torch.cuda.synchronize()
        total = time.perf_counter() - start
    out_tokens = sum(len(o.outputs[0].token_ids) for o in outs)

    events = []
    for e in prof.profiler.kineto_results.events():
        if e.device_type() != torch.autograd.DeviceType.CUDA or e.duration_ns() <= 0:
            continue
        events.append((e.start_ns(), e.start_ns() + e.duration_ns(), e.name()))
    events.sort()
    markers = [i for i, ev in enumerate(events) if category(ev[2]) == "marker"]
    if len(markers) != len(kinds):
        print(f"warning: {len(markers)} markers on the device for {len(kinds)} launches")
    per_kind: dict[str, dict[str, Any]] = defaultdict(
        lambda: {
            "launches": 0,
            "steps": 0,
            "seq_steps": 0,
            "span_s": 0.0,
            "busy_s": 0.0,
            "kernels": defaultdict(float),
        }
    )
    by_name: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for j, m in enumerate(markers[: len(kinds)]):
        kind, seqs, steps = kinds[j]
        end_idx = markers[j + 1] if j + 1 < len(markers) else len(events)
        seg = events[m + 1 : end_idx]
        seg_end = (
            events[end_idx][0] if end_idx < len(events) else max((e for _, e, _ in seg), default=events[m][1])
        )
        entry = per_kind[kind]
        entry["launches"] += 1
        entry["steps"] += steps
        entry["seq_steps"] += seqs * steps
        entry["span_s"] += (seg_end - events[m][1]) / 1e9
        entry["busy_s"] += union_length([(s, e) for s, e, _ in seg]) / 1e9
        for s, e, name in seg:
            entry["kernels"][category(name)] += (e - s) / 1e9
            by_name[name][0] += (e - s) / 1e9
            by_name[name][1] += 1
    first = events[markers[0]][0] if markers else 0
    last = max(e for _, e, _ in events) if events else 0
    result = {
        "unprofiled_total_s": round(unprofiled_s, 3),
        "unprofiled_launch_wall_s": {
            k: {"s": round(v[0], 4), "launches": v[1]} for k, v in sorted(host.items())
        },
        "total_s": round(total, 3),
        "output_tokens": out_tokens,
        "output_tok_per_s": round(out_tokens / total, 1),
        "device_span_s": round((last - first) / 1e9, 3),
        "device_busy_s": round(sum(v["busy_s"] for v in per_kind.values()), 3),
        "launches": len(kinds),
        "kinds": {
            k: {
                "launches": v["launches"],
                "steps": v["steps"],
                "seq_steps": v["seq_steps"],
                "span_s": round(v["span_s"], 4),
                "busy_s": round(v["busy_s"], 4),
                "idle_s": round(v["span_s"] - v["busy_s"], 4),
                "kernels_s": {c: round(t, 4) for c, t in sorted(v["kernels"].items(), key=lambda x: -x[1])},
            }
            for k, v in sorted(per_kind.items())
        },
        "top_kernels": [
            {"name": n[:90], "s": round(v[0], 4), "calls": v[1]}
            for n, v in sorted(by_name.items(), key=lambda x: -x[1][0])[:30]
        ],
    }
    print(json.dumps(result, indent=1))
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
