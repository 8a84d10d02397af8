"""Where the wall time of the throughput workload goes, step by step: prefill-carrying steps vs decode-only steps
by batch size, and the engine's host work around them (scheduling, output processing).

python benchmarks/phase_profile.py benchmarks/model-configs/qwen3-0.6b [--num-prompts 256] [--output-json F]

Each engine step is timed with a device synchronize after it (the step already ends in one host sync, so this
adds little); the figures are seconds of wall time summed over the run. The engine runs with asynchronous
scheduling off (``async_scheduling=False``): a step then holds exactly its own work, which is what this splits.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from typing import Any

import torch

from inferd import LLM, SamplingParams
from inferd.bench.datasets import random_requests


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--num-prompts", type=int, default=256)
    p.add_argument("--output-json", default=None)
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--max-tokens-cap", type=int, default=None, help="cap output lengths (quick runs)")
    args = p.parse_args()
    llm = LLM(
        args.model,
        load_format="dummy",
        dtype="bfloat16",
        max_model_len=args.max_model_len,
        async_scheduling=False,
    )
    core = llm.llm_engine.engine_core
    vocab = llm.llm_engine.model_config.hf_config.vocab_size
    requests = random_requests(args.num_prompts, None, None, seed=0)
    cap = args.max_model_len - 1 - (args.max_tokens_cap or 1024)
    prompts = [{"prompt_token_ids": [t % vocab for t in r.prompt_token_ids][:cap]} for r in requests]
    params = [
        SamplingParams(
            temperature=0.6,
            ignore_eos=True,
            max_tokens=min(r.max_tokens, args.max_tokens_cap or r.max_tokens),
            detokenize=False,
        )
        for r in requests
    ]
    llm.generate(prompts[:4], params[:4], use_tqdm=False)  # warm-up

    stats: dict[str, list[float]] = defaultdict(lambda: [0.0, 0, 0])  # seconds, steps, tokens
    original_step = core.step
    executor = core.executor
    original_launch = executor.launch_model
    device_time = [0.0]

    def launch(so: Any, num_steps: int = 1, continues: Any = None) -> Any:
        start = time.perf_counter()
        out = original_launch(so, num_steps, continues)
        out.result()  # the synchronous engine waits for each step right away anyway
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        device_time[0] += time.perf_counter() - start
        return out

    def step() -> Any:
        so_holder: list[Any] = []
        schedule = core.scheduler.schedule

        def capture() -> Any:
            so = schedule()
            so_holder.append(so)
            return so

        core.scheduler.schedule = capture  # type: ignore[method-assign]
        start = time.perf_counter()
        try:
            out = original_step()
        finally:
            core.scheduler.schedule = schedule  # type: ignore[method-assign]
        elapsed = time.perf_counter() - start
        so = so_holder[0]
        counts = list(so.num_scheduled_tokens.values())
        n_seqs = len(counts)
        prefill_tokens = sum(c for c in counts if c > 1)
        if prefill_tokens:
            key = "prefill-carrying"
        else:
            bucket = 1 << max(0, (n_seqs - 1).bit_length())
            key = f"decode batch <= {bucket:>3}"
        entry = stats[key]
        entry[0] += elapsed
        entry[1] += 1
        entry[2] += prefill_tokens if prefill_tokens else sum(len(o.new_token_ids) for o in out.outputs)
        return out

    core.step = step  # type: ignore[method-assign]
    executor.launch_model = launch  # type: ignore[method-assign]
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    total = time.perf_counter() - start
    out_tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    result = {
        "total_s": round(total, 3),
        "output_tok_per_s": round(out_tokens / total, 1),
        "engine_step_s": round(sum(v[0] for v in stats.values()), 3),
        "execute_model_s": round(device_time[0], 3),
        "phases": {k: {"s": round(v[0], 3), "steps": v[1], "tokens": v[2]} for k, v in sorted(stats.items())},
    }
    print(json.dumps(result, indent=1))
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main()
