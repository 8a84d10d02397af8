"""Our Qwen3 / Llama / Qwen2 against HF's own forward on tiny random models, through the paged KV cache."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, Qwen2Config, Qwen3Config
from transformers import LlamaForCausalLM as HFLlama
from transformers import Qwen2ForCausalLM as HFQwen2
from transformers import Qwen3ForCausalLM as HFQwen3
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from inferd.layers.attention import bind_kv_caches, iter_attention_layers
from inferd.layers.attention_metadata import AttentionMetadata
from inferd.layers.rotary_embedding import get_rope, rope_parameters_from_config
from inferd.models.llama import LlamaForCausalLM
from inferd.models.qwen2 import Qwen2ForCausalLM
from inferd.models.qwen3 import Qwen3ForCausalLM
from inferd.models.registry import SUPPORTED_ARCHITECTURES, get_model_class

VOCAB = 300
_TINY = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)
_LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 10000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}
CASES = {
    "qwen3": (HFQwen3, Qwen3ForCausalLM, Qwen3Config(**_TINY, head_dim=16, tie_word_embeddings=True)),
    "qwen2": (HFQwen2, Qwen2ForCausalLM, Qwen2Config(**_TINY, tie_word_embeddings=False)),
    "llama3_scaled_untied_bias": (
        HFLlama,
        LlamaForCausalLM,
        LlamaConfig(
            **_TINY,
            head_dim=32,
            rope_parameters=_LLAMA3_ROPE,
            tie_word_embeddings=False,
            attention_bias=True,
            mlp_bias=True,
        ),
    ),
    "llama_tied": (HFLlama, LlamaForCausalLM, LlamaConfig(**_TINY, tie_word_embeddings=True)),
}


def _hf_model(case: str) -> torch.nn.Module:
    hf_cls, _, config = CASES[case]
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = hf_cls(config).eval()
    with torch.no_grad():
        for (
            name,
            p,
        ) in model.named_parameters():  # weights large enough that a wrong detail shows in the logits
            p.copy_(1 + 0.2 * torch.randn_like(p) if "norm" in name else 0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module", params=list(CASES))
def pair(request):
    hf = _hf_model(request.param)
    ours = CASES[request.param][1](hf.config)
    ours.load_weights(hf.state_dict().items())
    return hf, ours.eval()


@torch.no_grad()
def _hf_logits(hf: torch.nn.Module, tokens: list[int]) -> torch.Tensor:
    return hf(input_ids=torch.tensor([tokens])).logits[0].float()  # [len, vocab]


class PagedRunner:
    """A minimal model runner: paged KV cache with randomly placed blocks, one flat batch per step."""

    def __init__(
        self, model: torch.nn.Module, block_size: int = 4, num_blocks: int = 64, with_cache: bool = True
    ):
        self.model = model
        self.block_size = block_size
        param = next(model.parameters())
        self.device = param.device
        cfg = model.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        shape = (2, num_blocks, block_size, cfg.num_key_value_heads, head_dim)
        kv = [torch.zeros(shape, dtype=param.dtype, device=self.device) for _ in range(cfg.num_hidden_layers)]
        bind_kv_caches(model, [(c[0], c[1]) for c in kv] if with_cache else [])
        assert all((layer.kv_cache is None) != with_cache for layer in iter_attention_layers(model))
        self.free = list(range(num_blocks))
        random.Random(0).shuffle(self.free)
        self.blocks: dict[int, list[int]] = {}
        self.num_computed: dict[int, int] = {}

    @torch.no_grad()
    def step(self, batch: list[tuple[int, list[int]]], pad: int = 0) -> list[torch.Tensor]:
        """batch: (seq id, new tokens). Returns each sequence's logits [len(new tokens), vocab]."""
        input_ids, positions, slots, starts, seq_lens = [], [], [], [0], []
        for seq_id, tokens in batch:
            start = self.num_computed.get(seq_id, 0)
            table = self.blocks.setdefault(seq_id, [])
            for pos in range(start, start + len(tokens)):
                if pos // self.block_size >= len(table):
                    table.append(self.free.pop())
                slots.append(table[pos // self.block_size] * self.block_size + pos % self.block_size)
                positions.append(pos)
            input_ids += tokens
            starts.append(starts[-1] + len(tokens))
            seq_lens.append(start + len(tokens))
            self.num_computed[seq_id] = start + len(tokens)
        max_blocks = max(len(self.blocks[s]) for s, _ in batch)
        tables = [self.blocks[s] + [0] * (max_blocks - len(self.blocks[s])) for s, _ in batch]
        dev = self.device
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slots + [-1] * pad, dtype=torch.int64, device=dev),
            query_start_loc=torch.tensor(starts, dtype=torch.int32, device=dev),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=dev),
            block_tables=torch.tensor(tables, dtype=torch.int32, device=dev),
            max_query_len=max(len(t) for _, t in batch),
            max_seq_len=max(seq_lens),
            num_actual_tokens=len(input_ids),
            query_start_loc_cpu=starts,
            seq_lens_cpu=seq_lens,
        )
        hidden = self.model(
            torch.tensor(input_ids + [0] * pad, device=dev),
            torch.tensor(positions + [0] * pad, device=dev),
            meta,
        )  # [num_tokens + pad, hidden]
        logits = self.model.compute_logits(hidden[: len(input_ids)]).cpu()
        assert logits.dtype == torch.float32 and logits.shape == (len(input_ids), VOCAB)
        return [logits[starts[i] : starts[i + 1]] for i in range(len(batch))]


PROMPT_LENS = [5, 1, 9, 13]


def _prompts(seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(VOCAB) for _ in range(n)] for n in PROMPT_LENS]


def _assert_close(ours: torch.Tensor, hf: torch.Tensor) -> None:
    assert hf.abs().max() > 0.5, "test model too weak to detect errors"
    assert (ours - hf).abs().max().item() < 1e-4


def test_full_prefill_batch_matches_hf(pair):
    hf, ours = pair
    prompts = _prompts()
    out = PagedRunner(ours).step(list(enumerate(prompts)), pad=3)
    for tokens, logits in zip(prompts, out, strict=True):
        _assert_close(logits, _hf_logits(hf, tokens))


def test_prefill_without_kv_cache_matches_hf(pair):
    hf, ours = pair
    prompts = _prompts(1)
    out = PagedRunner(ours, with_cache=False).step(list(enumerate(prompts)))
    for tokens, logits in zip(prompts, out, strict=True):
        _assert_close(logits, _hf_logits(hf, tokens))


def test_chunked_prefill_matches_hf(pair):
    hf, ours = pair
    prompts = [p for p in _prompts(2) if len(p) > 1]
    cuts = [len(p) // 2 for p in prompts]
    runner = PagedRunner(ours, block_size=2)
    first = runner.step([(i, p[:c]) for i, (p, c) in enumerate(zip(prompts, cuts, strict=True))])
    second = runner.step([(i, p[c:]) for i, (p, c) in enumerate(zip(prompts, cuts, strict=True))])
    for p, c, a, b in zip(prompts, cuts, first, second, strict=True):
        expected = _hf_logits(hf, p)
        _assert_close(a, expected[:c])
        _assert_close(b, expected[c:])


def test_decode_steps_in_mixed_batches_match_hf(pair):
    hf, ours = pair
    prompts = _prompts(3)
    runner = PagedRunner(ours, block_size=4)
    runner.step(list(enumerate(prompts[:3])))
    seqs = {i: list(p) for i, p in enumerate(prompts[:3])}
    rng = random.Random(4)
    for step in range(3):
        batch = []
        for i in seqs:
            token = rng.randrange(VOCAB)
            seqs[i].append(token)
            batch.append((i, [token]))
        if step == 1:  # a new prompt joins mid-way: prefill and decodes in one batch
            seqs[3] = list(prompts[3])
            batch.append((3, list(prompts[3])))
        out = runner.step(batch)
        for (i, tokens), logits in zip(batch, out, strict=True):
            expected = _hf_logits(hf, seqs[i])[-len(tokens) :]
            _assert_close(logits, expected)


def test_load_weights_returns_names_and_rejects_bad_checkpoints():
    hf = _hf_model("qwen2")
    state = dict(hf.state_dict())
    model = Qwen2ForCausalLM(hf.config)
    loaded = model.load_weights(state.items())
    assert loaded == {name for name, _ in model.named_parameters()}
    assert "model.layers.0.self_attn.qkv_proj.bias" in loaded

    missing = {k: v for k, v in state.items() if k != "model.layers.1.self_attn.k_proj.weight"}
    with pytest.raises(ValueError, match=r"model\.layers\.1\.self_attn\.k_proj\.weight"):
        Qwen2ForCausalLM(hf.config).load_weights(missing.items())
    with pytest.raises(ValueError, match=r"lm_head\.weight"):
        Qwen2ForCausalLM(hf.config).load_weights((k, v) for k, v in state.items() if k != "lm_head.weight")
    extra = {**state, "model.layers.0.mlp.extra.weight": torch.zeros(2)}
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.extra\.weight"):
        Qwen2ForCausalLM(hf.config).load_weights(extra.items())
    bad_shape = {**state, "model.layers.0.mlp.up_proj.weight": torch.zeros(3, 64)}
    with pytest.raises(ValueError, match=r"up_proj.*shape"):
        Qwen2ForCausalLM(hf.config).load_weights(bad_shape.items())


def test_tied_model_ignores_lm_head_and_inv_freq():
    hf = _hf_model("qwen3")
    model = Qwen3ForCausalLM(hf.config)
    weights = dict(hf.state_dict())
    weights["lm_head.weight"] = torch.zeros_like(weights["model.embed_tokens.weight"])
    weights["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.zeros(8)
    model.load_weights(weights.items())
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.equal(model.lm_head.weight, hf.model.embed_tokens.weight)


def test_registry_picks_classes_and_lists_supported():
    assert get_model_class(["Qwen3ForCausalLM"]) is Qwen3ForCausalLM
    assert get_model_class(["Unknown", "LlamaForCausalLM"]) is LlamaForCausalLM
    assert get_model_class(["Qwen2ForCausalLM"]) is Qwen2ForCausalLM
    for archs in (["GPT2LMHeadModel"], None, []):
        with pytest.raises(ValueError, match="Qwen3ForCausalLM"):
            get_model_class(archs)
    assert set(SUPPORTED_ARCHITECTURES) == {"Qwen3ForCausalLM", "LlamaForCausalLM", "Qwen2ForCausalLM"}


def test_unsupported_configs_are_refused():
    with pytest.raises(ValueError, match="sliding"):
        Qwen2ForCausalLM(Qwen2Config(**_TINY, use_sliding_window=True, sliding_window=8, max_window_layers=0))
    with pytest.raises(ValueError, match="gelu"):
        LlamaForCausalLM(LlamaConfig(**_TINY, hidden_act="gelu"))
    model = LlamaForCausalLM(LlamaConfig(**_TINY))
    with pytest.raises(ValueError, match="2 attention layers"):
        bind_kv_caches(model, [(torch.zeros(1), torch.zeros(1))])


@pytest.mark.parametrize(
    "rope", [None, _LLAMA3_ROPE, {"rope_type": "linear", "rope_theta": 5e5, "factor": 4.0}]
)
def test_rope_table_matches_hf(rope):
    config = LlamaConfig(**_TINY, head_dim=32, **({"rope_parameters": rope} if rope else {}))
    positions = torch.tensor([[0, 1, 7, 63, 64, 100, 255]])
    cos, sin = LlamaRotaryEmbedding(config)(torch.zeros(1), positions)  # [1, 7, 32] each
    table = get_rope(config, 32).cos_sin_cache[positions[0]]  # [7, 32]
    torch.testing.assert_close(table[:, :16], cos[0, :, :16])
    torch.testing.assert_close(table[:, 16:], sin[0, :, :16])


def test_rope_reads_old_style_configs():
    new = LlamaConfig(**_TINY, rope_parameters=dict(_LLAMA3_ROPE, rope_theta=5e5))
    scaling = {k: v for k, v in _LLAMA3_ROPE.items() if k not in ("rope_type", "rope_theta")}
    old = SimpleNamespace(
        rope_theta=5e5, rope_scaling={"type": "llama3", **scaling}, max_position_embeddings=256
    )
    assert rope_parameters_from_config(old)["rope_type"] == "llama3"
    torch.testing.assert_close(get_rope(old, 16).cos_sin_cache, get_rope(new, 16).cos_sin_cache)
    plain = SimpleNamespace(rope_theta=1e6, rope_scaling=None, max_position_embeddings=32)
    assert rope_parameters_from_config(plain) == {"rope_theta": 1e6, "rope_type": "default"}


def test_unknown_rope_type_is_refused():
    config = SimpleNamespace(
        rope_theta=1e4, rope_scaling={"rope_type": "yarn", "factor": 4.0}, max_position_embeddings=32
    )
    with pytest.raises(ValueError, match="yarn"):
        get_rope(config, 16)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_model_matches_hf(dtype):
    """Built under a CUDA default device and dtype, the model agrees with HF's float32 CPU forward."""
    hf = _hf_model("qwen3")
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("cuda"):
            ours = Qwen3ForCausalLM(hf.config)
    finally:
        torch.set_default_dtype(default_dtype)
    ours.load_weights(hf.state_dict().items())
    assert next(ours.parameters()).dtype == dtype and next(ours.parameters()).is_cuda
    assert ours.model.layers[0].self_attn.rotary_emb.cos_sin_cache.dtype == torch.float32
    prompts = _prompts(5)
    runner = PagedRunner(ours, block_size=16)
    out = runner.step(list(enumerate(prompts)), pad=2)
    out += runner.step([(i, [7]) for i in range(len(prompts))])
    expected = [_hf_logits(hf, p) for p in prompts] + [_hf_logits(hf, [*p, 7])[-1:] for p in prompts]
    tol = 1e-3 if dtype == torch.float32 else 0.15 * max(e.abs().max().item() for e in expected)
    for logits, ref_logits in zip(out, expected, strict=True):
        assert (logits - ref_logits).abs().max().item() < tol
