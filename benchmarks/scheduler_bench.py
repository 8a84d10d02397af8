"""Host cost of the scheduler per engine round on the nano-vllm workload shape (256 requests, prompts and outputs
uniform in [100, 1024], ignore_eos, multi-step 8), without a model: schedule + decode lookahead, and
update_from_output with a fake runner that returns one token per decode step. CPU only.

    python benchmarks/scheduler_bench.py
"""

from __future__ import annotations

import random
import time

from inferd.config import CacheConfig, SchedulerConfig
from inferd.engine.request import Request
from inferd.engine.scheduler import Scheduler
from inferd.sampling_params import SamplingParams
from inferd.worker.model_runner_output import ModelRunnerOutput


def main() -> None:
    rng = random.Random(0)
    sched = Scheduler(
        SchedulerConfig(max_num_seqs=256, max_num_batched_tokens=8192, max_model_len=4096),
        CacheConfig(block_size=16),
        num_blocks=40000,
    )
    for i in range(256):
        prompt = [rng.randrange(100, 1000) for _ in range(rng.randint(100, 1024))]
        params = SamplingParams(max_tokens=rng.randint(100, 1024), ignore_eos=True)
        sched.add_request(Request(f"r{i}", prompt, params, eos_token_id=2, max_model_len=4096))
    t_schedule = t_update = 0.0
    rounds = 0
    while sched.has_unfinished_requests():
        start = time.perf_counter()
        out = sched.schedule()
        steps = 1 if out.scheduled_new_reqs else sched.add_decode_lookahead(out, 8)
        t_schedule += time.perf_counter() - start
        sampled = []
        for req_id, n in out.num_scheduled_tokens.items():
            req = sched.get_request(req_id)
            done = req is not None and req.num_computed_tokens + n == req.num_tokens
            sampled.append([5] * steps if done else [])
        runner = ModelRunnerOutput(req_ids=list(out.num_scheduled_tokens), sampled_token_ids=sampled)
        start = time.perf_counter()
        sched.update_from_output(out, runner)
        t_update += time.perf_counter() - start
        rounds += 1
    print(
        f"rounds {rounds}; schedule + lookahead {t_schedule * 1000 / rounds:.2f} ms/round, "
        f"update_from_output {t_update * 1000 / rounds:.2f} ms/round; total {t_schedule + t_update:.2f} s"
    )


if __name__ == "__main__":
    main()
