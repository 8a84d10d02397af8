"""The offline LLM API end to end on tiny random models, checked against HF transformers (float32, CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from inferd import LLM, SamplingParams

PROMPTS = [
    "The quick brown fox",
    "Paris is the capital of France. Berlin is",
    "Hello",
    "def add(a, b):\n    return a + b\n" * 3,
]
MAX_TOKENS = 12


def hf_greedy(path: Path, prompt_ids: list[list[int]], max_tokens: int) -> list[list[int]]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.generation_config.eos_token_id = None
    outs = []
    for ids in prompt_ids:
        x = torch.tensor([ids])
        with torch.no_grad():
            y = model.generate(
                x,
                max_new_tokens=max_tokens,
                do_sample=False,
                pad_token_id=0,
                attention_mask=torch.ones_like(x),
            )
        outs.append(y[0, len(ids) :].tolist())
    return outs


def hf_logprobs(path: Path, ids: list[int]) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    return torch.log_softmax(logits.float(), dim=-1)


def _prompt_ids(path: Path) -> list[list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    return [tok.encode(p) for p in PROMPTS]


GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)


@pytest.mark.parametrize("model_fixture", ["tiny_qwen3", "tiny_llama", "tiny_qwen2"])
def test_greedy_matches_hf(model_fixture: str, request: pytest.FixtureRequest) -> None:
    path = request.getfixturevalue(model_fixture)
    prompt_ids = _prompt_ids(path)
    expected = hf_greedy(path, prompt_ids, MAX_TOKENS)
    llm = LLM(str(path), max_model_len=256, seed=0)
    outs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], GREEDY, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == expected


@pytest.mark.parametrize(
    "engine_kwargs",
    [
        pytest.param({"max_num_batched_tokens": 7}, id="chunked-prefill"),
        pytest.param({"num_gpu_blocks_override": 34, "block_size": 4}, id="preemption"),
        pytest.param({"max_num_seqs": 1}, id="one-at-a-time"),
    ],
)
def test_greedy_matches_hf_under_pressure(tiny_qwen3: Path, engine_kwargs: dict) -> None:
    prompt_ids = _prompt_ids(tiny_qwen3) * 2
    expected = hf_greedy(tiny_qwen3, prompt_ids, MAX_TOKENS)
    llm = LLM(str(tiny_qwen3), max_model_len=128, **engine_kwargs)
    outs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], GREEDY, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == expected
    scheduler = llm.llm_engine.engine_core.scheduler
    if "num_gpu_blocks_override" in engine_kwargs:
        assert scheduler.make_stats().num_preemptions > 0
    assert scheduler.kv_cache_manager.usage == 0.0


def test_prefix_cache_hits_keep_outputs(tiny_qwen3: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_qwen3)
    shared = tok.encode("Paris is the capital of France. " * 6)
    prompt_ids = [shared + tok.encode(s) for s in (" Berlin", " The quick", " Hello world")]
    expected = hf_greedy(tiny_qwen3, prompt_ids, MAX_TOKENS)
    llm = LLM(str(tiny_qwen3), max_model_len=256, block_size=4)
    first = llm.generate([{"prompt_token_ids": prompt_ids[0]}], GREEDY, use_tqdm=False)
    rest = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids[1:]], GREEDY, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in first + rest] == expected
    assert all(o.num_cached_tokens >= 4 * (len(shared) // 4) - 4 for o in rest)
    assert llm.llm_engine.engine_core.scheduler.make_stats().prefix_cache_hits > 0


def test_logprobs_match_hf(tiny_llama: Path) -> None:
    prompt = _prompt_ids(tiny_llama)[1]
    llm = LLM(str(tiny_llama), max_model_len=256)
    params = SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True, logprobs=3, prompt_logprobs=2)
    out = llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)[0]
    completion = out.outputs[0]
    ref = hf_logprobs(tiny_llama, prompt + completion.token_ids)
    for i, (tok, lp) in enumerate(zip(completion.token_ids, completion.logprobs)):
        assert next(iter(lp)) == tok and lp[tok].rank == 1
        assert abs(lp[tok].logprob - ref[len(prompt) - 1 + i, tok].item()) < 1e-4
        assert len(lp) == 3  # the greedy choice is also the top-1 alternative
    assert out.prompt_logprobs[0] is None
    for pos in range(1, len(prompt)):
        entry = out.prompt_logprobs[pos]
        assert abs(entry[prompt[pos]].logprob - ref[pos - 1, prompt[pos]].item()) < 1e-4
    total = sum(lp[t].logprob for t, lp in zip(completion.token_ids, completion.logprobs))
    assert completion.cumulative_logprob == pytest.approx(total, abs=1e-4)


def test_sampling_seed_n_and_stop(tiny_qwen3: Path) -> None:
    llm = LLM(str(tiny_qwen3), max_model_len=256)
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=7, max_tokens=10, ignore_eos=True)
    alone = llm.generate(["Hello"], params, use_tqdm=False)[0].outputs[0].token_ids
    batched = llm.generate(["The quick brown fox", "Hello", "Paris"], params, use_tqdm=False)[1]
    assert batched.outputs[0].token_ids == alone

    n_out = llm.generate(
        ["Hello"], SamplingParams(n=3, temperature=1.0, max_tokens=8, seed=1), use_tqdm=False
    )[0]
    assert [c.index for c in n_out.outputs] == [0, 1, 2]
    assert all(len(c.token_ids) > 0 for c in n_out.outputs)

    full = llm.generate(["Hello"], GREEDY, use_tqdm=False)[0].outputs[0].text
    assert len(full) > 3
    stop = full[2:4]
    cut = llm.generate(
        ["Hello"],
        SamplingParams(temperature=0, max_tokens=MAX_TOKENS, stop=[stop], ignore_eos=True),
        use_tqdm=False,
    )[0]
    assert cut.outputs[0].text == full[: full.index(stop)]
    assert cut.outputs[0].finish_reason == "stop" and cut.outputs[0].stop_reason == stop


def test_errors_are_clear(tiny_qwen3: Path) -> None:
    llm = LLM(str(tiny_qwen3), max_model_len=32)
    with pytest.raises(ValueError, match="max_model_len"):
        llm.generate([{"prompt_token_ids": [5] * 40}], GREEDY, use_tqdm=False)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(ValueError, match="Unknown engine argument"):
        LLM(str(tiny_qwen3), not_a_flag=1)
    # The engine still serves after refusing a request.
    assert llm.generate(["Hello"], GREEDY, use_tqdm=False)[0].outputs[0].token_ids


def test_chat(tiny_qwen3: Path) -> None:
    llm = LLM(str(tiny_qwen3), max_model_len=256)
    outs = llm.chat(
        [[{"role": "user", "content": "Hello"}], [{"role": "user", "content": "Paris?"}]],
        SamplingParams(temperature=0, max_tokens=4, ignore_eos=True),
        use_tqdm=False,
    )
    assert len(outs) == 2 and all(len(o.outputs[0].token_ids) == 4 for o in outs)
    tok = llm.get_tokenizer()
    assert outs[0].prompt_token_ids == tok.encode(
        "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.slow
def test_smollm2_gguf_knows_paris() -> None:
    from gguf_fixture import smollm2_gguf_path

    llm = LLM(str(smollm2_gguf_path()), max_model_len=512)
    out = llm.chat(
        [{"role": "user", "content": "What is the capital of France?"}],
        SamplingParams(temperature=0, max_tokens=32),
        use_tqdm=False,
    )[0].outputs[0]
    assert "Paris" in out.text
    assert out.finish_reason in ("stop", "length")


def test_multistep_decode_matches_hf(tiny_qwen2: Path) -> None:
    prompt_ids = _prompt_ids(tiny_qwen2)
    expected = hf_greedy(tiny_qwen2, prompt_ids, MAX_TOKENS)
    llm = LLM(str(tiny_qwen2), max_model_len=128, num_scheduler_steps=5, block_size=4)
    outs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], GREEDY, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == expected
    # Seeded sampling gives the same tokens with and without multi-step decoding; max_tokens is exact.
    params = SamplingParams(temperature=1.0, seed=3, max_tokens=11, ignore_eos=True)
    single = LLM(str(tiny_qwen2), max_model_len=128, block_size=4)
    a = [o.outputs[0].token_ids for o in llm.generate(["Hello", "The quick"], params, use_tqdm=False)]
    b = [o.outputs[0].token_ids for o in single.generate(["Hello", "The quick"], params, use_tqdm=False)]
    assert a == b and all(len(t) == 11 for t in a)
    assert llm.llm_engine.engine_core.scheduler.kv_cache_manager.usage == 0.0


def test_memory_profile_batch_runs(tiny_qwen3: Path) -> None:
    # The GPU memory profile's dummy batch (prefills of max_num_batched_tokens + a top-k/top-p sample), on CPU.
    llm = LLM(str(tiny_qwen3), max_model_len=128)
    runner = llm.llm_engine.engine_core.runner
    from inferd.worker.memory_profiler import run_dummy_batch

    run_dummy_batch(runner, num_tokens=96, num_seqs=5, num_blocks=40)
    # The engine still serves afterwards once its own cache is bound again.
    runner.initialize_kv_cache(llm.llm_engine.engine_core.num_blocks)
    assert llm.generate(["Hello"], GREEDY, use_tqdm=False)[0].outputs[0].token_ids
