"""OutputProcessor: stop strings, output kinds, n > 1 fan-out, logprobs and stats, with a real tiny tokenizer."""

from __future__ import annotations

import pytest

from inferd.engine.core_types import EngineCoreOutput, TokenLogprobs
from inferd.engine.output_processor import OutputProcessor
from inferd.outputs import Logprob
from inferd.sampling_params import RequestOutputKind, SamplingParams

_CORPUS = [
    "Hello world, this is a test. The quick brown fox jumps over the lazy dog.",
    "Café crème brûlée é è ê. 中文字符测试 你好世界. emoji 😀🎉👍 party.",
]
DELTA, CUMULATIVE, FINAL_ONLY = (
    RequestOutputKind.DELTA,
    RequestOutputKind.CUMULATIVE,
    RequestOutputKind.FINAL_ONLY,
)


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 10, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>")


def enc(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def add(proc, tokenizer, request_id="r", prompt="Hello", arrival=100.0, **params):
    return proc.add_request(
        request_id,
        prompt,
        enc(tokenizer, prompt),
        SamplingParams(**params),
        eos_token_id=1,
        arrival_time=arrival,
    )


def stream(proc, req_id, ids, finish_at_end=None, start=101.0):
    """Feed ``ids`` one token per step; return the ProcessedOutputs of each step."""
    results = []
    for i, tid in enumerate(ids):
        finish = finish_at_end if i == len(ids) - 1 else None
        out = EngineCoreOutput(req_id, [tid], finish_reason=finish)
        results.append(proc.process_outputs([out], now=start + i))
    return results


def texts(results, index=0):
    return [c.text for r in results for ro in r.request_outputs for c in ro.outputs if c.index == index]


def test_delta_stream_reassembles_text_without_partial_chars(tokenizer):
    proc = OutputProcessor(tokenizer)
    add(proc, tokenizer, output_kind=DELTA, max_tokens=100)
    ids = enc(tokenizer, " 中文 and 😀🎉 done")
    results = stream(proc, "r", ids, finish_at_end="length")
    deltas = texts(results)
    assert "".join(deltas) == tokenizer.decode(enc(tokenizer, "Hello") + ids)[len("Hello") :]
    assert all("\ufffd" not in d for d in deltas)
    tokens = [t for r in results for ro in r.request_outputs for t in ro.outputs[0].token_ids]
    assert tokens == ids  # every token reported exactly once, even those that produced no text yet
    final = results[-1].request_outputs[0]
    assert final.finished and final.outputs[0].finish_reason == "length"
    assert not proc.has_unfinished_requests()


def test_stop_string_split_across_tokens_cuts_text_exactly(tokenizer):
    proc = OutputProcessor(tokenizer)
    add(proc, tokenizer, stop=["STOP"], output_kind=DELTA, max_tokens=100)
    ids = enc(tokenizer, " world. STOP and more")
    stop_end = next(i for i in range(len(ids)) if "STOP" in tokenizer.decode(ids[: i + 1]))
    assert "STOP" not in tokenizer.decode([ids[stop_end]])  # the stop string spans several tokens
    results = stream(proc, "r", ids)
    streamed = texts(results)
    shown = ""
    for piece in streamed:
        shown += piece
        assert "S" not in shown  # no piece of the stop string ever reached the user
    assert shown == " world. "
    stopped = results[stop_end]
    assert stopped.reqs_to_abort == ["r"]
    out = stopped.request_outputs[0]
    assert out.finished and out.outputs[0].finish_reason == "stop" and out.outputs[0].stop_reason == "STOP"
    tokens = [t for r in results for ro in r.request_outputs for t in ro.outputs[0].token_ids]
    assert tokens == ids[: stop_end + 1]  # keeps the token that completed the stop string
    assert all(
        not r.request_outputs and not r.reqs_to_abort for r in results[stop_end + 1 :]
    )  # later: ignored


def test_stop_string_in_the_middle_of_a_multi_token_step(tokenizer):
    proc = OutputProcessor(tokenizer)
    add(proc, tokenizer, stop=["fox", "zzz"], include_stop_str_in_output=True, max_tokens=100)
    ids = enc(tokenizer, " quick brown fox jumps")
    res = proc.process_outputs([EngineCoreOutput("r", ids)], now=101.0)
    completion = res.request_outputs[0].outputs[0]
    assert completion.text == " quick brown fox"
    assert tokenizer.decode(completion.token_ids).endswith("fox") and len(completion.token_ids) < len(ids)
    assert completion.stop_reason == "fox" and res.reqs_to_abort == ["r"]


def test_held_back_text_is_released_when_it_cannot_start_a_stop_string(tokenizer):
    proc = OutputProcessor(tokenizer)
    add(proc, tokenizer, stop=["\n\nUser:"], max_tokens=100)  # CUMULATIVE
    first = proc.process_outputs([EngineCoreOutput("r", enc(tokenizer, " world\n"))], now=101.0)
    assert first.request_outputs[0].outputs[0].text == " world"  # "\n" may start the stop string
    second = proc.process_outputs([EngineCoreOutput("r", enc(tokenizer, "ok"))], now=102.0)
    assert second.request_outputs[0].outputs[0].text == " world\nok"
    final = proc.process_outputs([EngineCoreOutput("r", [], finish_reason="length")], now=103.0)
    assert final.request_outputs[0].outputs[0].text == " world\nok"


def test_stop_strings_wait_for_min_tokens(tokenizer):
    proc = OutputProcessor(tokenizer)
    ids = enc(tokenizer, " is a test")
    add(proc, tokenizer, stop=["is"], min_tokens=len(ids), max_tokens=100)
    res = stream(proc, "r", ids)
    assert not any(r.reqs_to_abort for r in res)
    assert res[-1].request_outputs[0].outputs[0].finish_reason is None


def test_core_finish_reasons_pass_through(tokenizer):
    proc = OutputProcessor(tokenizer)
    add(proc, tokenizer, request_id="a", max_tokens=100)
    add(proc, tokenizer, request_id="b", max_tokens=100)
    res = proc.process_outputs(
        [
            EngineCoreOutput("a", [1], finish_reason="stop", stop_reason=None),
            EngineCoreOutput("b", enc(tokenizer, " x"), finish_reason="length"),
        ],
        now=101.0,
    )
    by_id = {ro.request_id: ro.outputs[0] for ro in res.request_outputs}
    assert by_id["a"].finish_reason == "stop" and by_id["a"].text == ""  # EOS is a skipped special token
    assert by_id["b"].finish_reason == "length" and by_id["b"].text == " x"
    assert res.reqs_to_abort == []


def test_cumulative_and_final_only(tokenizer):
    ids = enc(tokenizer, " quick brown")
    proc = OutputProcessor(tokenizer)
    add(proc, tokenizer, request_id="c", output_kind=CUMULATIVE, max_tokens=100)
    add(proc, tokenizer, request_id="f", output_kind=FINAL_ONLY, max_tokens=100)
    cum, fin = [], []
    for i, tid in enumerate(ids):
        finish = "length" if i == len(ids) - 1 else None
        res = proc.process_outputs(
            [
                EngineCoreOutput("c", [tid], finish_reason=finish),
                EngineCoreOutput("f", [tid], finish_reason=finish),
            ]
        )
        cum += [ro for ro in res.request_outputs if ro.request_id == "c"]
        fin += [ro for ro in res.request_outputs if ro.request_id == "f"]
    assert [ro.outputs[0].token_ids for ro in cum] == [ids[: i + 1] for i in range(len(ids))]
    assert cum[-1].outputs[0].text == " quick brown" and cum[-1].finished and not cum[-2].finished
    assert len(fin) == 1 and fin[0].finished and fin[0].outputs[0].text == " quick brown"
    assert fin[0].outputs[0].token_ids == ids


def test_n2_fan_out_and_aggregation(tokenizer):
    proc = OutputProcessor(tokenizer)
    reqs = add(proc, tokenizer, request_id="p", n=2, seed=7, output_kind=DELTA, max_tokens=100)
    assert [r.req_id for r in reqs] == ["0_p", "1_p"]
    assert [r.sampling_params.n for r in reqs] == [1, 1] and [r.sampling_params.seed for r in reqs] == [7, 8]
    a, b = enc(tokenizer, " fox"), enc(tokenizer, " dog")
    res = proc.process_outputs([EngineCoreOutput("1_p", b[:1])], now=101.0)
    assert [c.index for c in res.request_outputs[0].outputs] == [1]  # only completions with something new
    res = proc.process_outputs(
        [EngineCoreOutput("0_p", a, finish_reason="length"), EngineCoreOutput("1_p", b[1:])], now=102.0
    )
    out = res.request_outputs[0]
    assert not out.finished  # one of two completions is still running
    assert {c.index: c.finish_reason for c in out.outputs} == {0: "length", 1: None}
    res = proc.process_outputs([EngineCoreOutput("1_p", [1], finish_reason="stop", stop_reason=1)], now=103.0)
    out = res.request_outputs[0]
    assert out.finished and [(c.index, c.finish_reason, c.stop_reason) for c in out.outputs] == [
        (1, "stop", 1)
    ]
    assert proc.get_num_unfinished_requests() == 0
    assert out.metrics.first_token_time == 101.0 and out.metrics.finished_time == 103.0


def test_n2_cumulative_reports_all_completions(tokenizer):
    proc = OutputProcessor(tokenizer)
    reqs = add(proc, tokenizer, request_id="p", n=2, max_tokens=100)
    assert all(r.sampling_params.seed is None for r in reqs)
    res = proc.process_outputs([EngineCoreOutput("0_p", enc(tokenizer, " fox"))], now=101.0)
    assert [(c.index, c.text) for c in res.request_outputs[0].outputs] == [(0, " fox"), (1, "")]


def test_duplicate_ids_and_abort(tokenizer):
    proc = OutputProcessor(tokenizer)
    add(proc, tokenizer, request_id="x", n=2)
    with pytest.raises(ValueError, match="already in use"):
        add(proc, tokenizer, request_id="x")
    with pytest.raises(ValueError, match="already in use"):
        add(proc, tokenizer, request_id="0_x")  # would collide with a child id
    proc.process_outputs([EngineCoreOutput("0_x", [5], finish_reason="length")])
    assert proc.abort_requests(["x", "unknown"]) == ["1_x"]
    assert not proc.has_unfinished_requests()
    assert proc.process_outputs([EngineCoreOutput("1_x", [5])]).request_outputs == []
    add(proc, tokenizer, request_id="x")  # the id is free again


def test_no_tokenizer_gives_token_ids_only():
    proc = OutputProcessor(None)
    proc.add_request("r", None, [1, 2], SamplingParams(logprobs=1), None, 0.0)
    lp = TokenLogprobs(token_ids=[7, 8], logprobs=[-0.5, -0.1], rank=2)
    res = proc.process_outputs([EngineCoreOutput("r", [7], new_logprobs=[lp], finish_reason="length")])
    c = res.request_outputs[0].outputs[0]
    assert c.text == "" and c.token_ids == [7] and c.logprobs[0][7] == Logprob(-0.5, 2, None)
    with pytest.raises(ValueError, match="stop strings"):
        proc.add_request("s", None, [1], SamplingParams(stop=["x"]), None, 0.0)


def test_logprobs_shape_and_cumulative(tokenizer):
    proc = OutputProcessor(tokenizer)
    t1, t2, alt = list(dict.fromkeys(enc(tokenizer, "Hello world, fox")))[:3]
    add(proc, tokenizer, logprobs=2, output_kind=DELTA, max_tokens=100)
    step1 = TokenLogprobs(token_ids=[t1, t1, alt], logprobs=[-0.2, -0.2, -1.9], rank=1)  # chosen is top-1
    step2 = TokenLogprobs(token_ids=[t2, alt, t1], logprobs=[-3.0, -0.1, -0.4], rank=5)
    r1 = proc.process_outputs([EngineCoreOutput("r", [t1], new_logprobs=[step1])], now=101.0)
    r2 = proc.process_outputs([EngineCoreOutput("r", [t2], new_logprobs=[step2], finish_reason="length")])
    pos1 = r1.request_outputs[0].outputs[0].logprobs[0]
    assert list(pos1) == [t1, alt]  # the chosen token appears once, with its rank
    assert pos1[t1] == Logprob(-0.2, 1, tokenizer.decode([t1])) and pos1[alt].rank == 2
    c2 = r2.request_outputs[0].outputs[0]
    assert len(c2.logprobs) == 1 and list(c2.logprobs[0]) == [t2, alt, t1]
    assert [lp.rank for lp in c2.logprobs[0].values()] == [5, 1, 2]
    assert c2.cumulative_logprob == pytest.approx(-3.2)


def test_logprobs_none_when_not_asked_and_no_decoded_token_without_detokenize(tokenizer):
    proc = OutputProcessor(tokenizer)
    add(proc, tokenizer, request_id="plain")
    add(proc, tokenizer, request_id="raw", logprobs=0, detokenize=False)
    lp = TokenLogprobs(token_ids=[5], logprobs=[-1.0], rank=3)
    res = proc.process_outputs(
        [EngineCoreOutput("plain", [5], new_logprobs=[lp]), EngineCoreOutput("raw", [5], new_logprobs=[lp])]
    )
    by_id = {ro.request_id: ro.outputs[0] for ro in res.request_outputs}
    assert by_id["plain"].logprobs is None and by_id["plain"].cumulative_logprob is None
    assert by_id["raw"].text == "" and by_id["raw"].logprobs == [{5: Logprob(-1.0, 3, None)}]


@pytest.mark.parametrize("kind", [DELTA, CUMULATIVE])
def test_prompt_logprobs(tokenizer, kind):
    proc = OutputProcessor(tokenizer)
    prompt_ids = enc(tokenizer, "Hello world")
    proc.add_request(
        "r", "Hello world", prompt_ids, SamplingParams(prompt_logprobs=1, output_kind=kind), 1, 0.0
    )
    positions = [TokenLogprobs([t, 3], [-1.0, -0.5], rank=2) for t in prompt_ids[1:]]
    half = len(positions) // 2
    # Chunked prefill: prompt logprobs arrive over two steps, the first token with the second.
    r0 = proc.process_outputs([EngineCoreOutput("r", [], new_prompt_logprobs=[None, *positions[:half]])])
    assert r0.request_outputs == []  # nothing for the user yet
    r1 = proc.process_outputs([EngineCoreOutput("r", [5], new_prompt_logprobs=positions[half:])])
    r2 = proc.process_outputs([EngineCoreOutput("r", [6], finish_reason="length")])
    first = r1.request_outputs[0].prompt_logprobs
    assert len(first) == len(prompt_ids) and first[0] is None
    assert list(first[1]) == [prompt_ids[1], 3] and first[1][prompt_ids[1]].decoded_token == tokenizer.decode(
        [prompt_ids[1]]
    )
    later = r2.request_outputs[0].prompt_logprobs
    assert later is None if kind == DELTA else later == first  # DELTA: reported once


def test_iteration_stats(tokenizer):
    proc = OutputProcessor(tokenizer)
    prompt_len = len(enc(tokenizer, "Hello"))
    add(proc, tokenizer, request_id="a", arrival=100.0, max_tokens=3)
    add(proc, tokenizer, request_id="b", arrival=100.5, n=2)
    s1 = proc.process_outputs(
        [EngineCoreOutput("a", [5], num_cached_tokens=2), EngineCoreOutput("0_b", [6, 7])], now=101.0
    ).iteration_stats
    assert s1.num_prompt_tokens == 2 * prompt_len and s1.num_generation_tokens == 3
    assert s1.time_to_first_tokens == [1.0, 0.5] and s1.inter_token_latencies == []
    res = proc.process_outputs(
        [EngineCoreOutput("a", [5, 5], finish_reason="length"), EngineCoreOutput("1_b", [8])], now=101.25
    )
    s2 = res.iteration_stats
    assert s2.num_prompt_tokens == prompt_len and s2.num_generation_tokens == 3
    assert s2.time_to_first_tokens == [0.75] and s2.inter_token_latencies == [0.25]
    (done,) = s2.finished_requests
    assert (done.finish_reason, done.num_prompt_tokens, done.num_generation_tokens) == (
        "length",
        prompt_len,
        3,
    )
    assert (
        done.e2e_latency == pytest.approx(1.25)
        and done.ttft == pytest.approx(1.0)
        and done.max_tokens_param == 3
    )
    out_a = next(ro for ro in res.request_outputs if ro.request_id == "a")
    assert out_a.num_cached_tokens == 2 and out_a.metrics.arrival_time == 100.0


def test_out_of_vocab_tokens_do_not_break_the_text(tokenizer):
    proc = OutputProcessor(tokenizer)
    add(proc, tokenizer, max_tokens=100)
    ids = [enc(tokenizer, " fox")[0], 151935, *enc(tokenizer, " fox")[1:]]
    res = proc.process_outputs([EngineCoreOutput("r", ids, finish_reason="length")])
    assert (
        res.request_outputs[0].outputs[0].text == " fox"
        and res.request_outputs[0].outputs[0].token_ids == ids
    )


def test_a_failure_in_one_request_drops_that_request_only(tokenizer, monkeypatch):
    proc = OutputProcessor(tokenizer)
    add(proc, tokenizer, "good", max_tokens=4)
    add(proc, tokenizer, "bad", n=2, max_tokens=4)
    original = OutputProcessor._process_child

    def faulty(self, child, out, now, result):
        if child.parent.request_id == "bad":
            raise RuntimeError("boom")
        return original(self, child, out, now, result)

    monkeypatch.setattr(OutputProcessor, "_process_child", faulty)
    tok = enc(tokenizer, " world")[0]
    res = proc.process_outputs([EngineCoreOutput(r, [tok]) for r in ("0_bad", "good", "1_bad")], now=101.0)
    assert [o.request_id for o in res.request_outputs] == ["good"]
    assert list(res.failed) == ["bad"] and str(res.failed["bad"]) == "boom"
    assert sorted(res.reqs_to_abort) == ["0_bad", "1_bad"]
    assert proc.get_num_unfinished_requests() == 1
