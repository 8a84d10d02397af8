"""Llama, and the decoder-only transformer that Qwen2 and Qwen3 share with it (math only).

``DecoderForCausalLM`` is the common body: pre-norm layers of rotary GQA attention and a gated SiLU MLP.
Subclasses choose the differences (biases, per-head q/k norm) through :class:`DecoderSpec`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from inferd import kernels
from inferd.distributed.parallel_state import divide_for_tp, local_num_heads, local_num_kv_heads
from inferd.layers.attention import Attention
from inferd.layers.attention_metadata import AttentionMetadata
from inferd.layers.layernorm import RMSNorm
from inferd.layers.linear import MergedGateUpLinear, QKVLinear, RowLinear, default_weight_loader
from inferd.layers.rotary_embedding import RotaryEmbedding, get_rope
from inferd.layers.vocab_embedding import LMHead, VocabEmbedding

# (fused parameter part, HF checkpoint part, shard id)
_STACKED_PARAMS: tuple[tuple[str, str, str | int], ...] = (
    (".qkv_proj.", ".q_proj.", "q"),
    (".qkv_proj.", ".k_proj.", "k"),
    (".qkv_proj.", ".v_proj.", "v"),
    (".gate_up_proj.", ".gate_proj.", 0),
    (".gate_up_proj.", ".up_proj.", 1),
)
_SKIPPED_SUFFIXES = ("rotary_emb.inv_freq", "rotary_emb.cos_cached", "rotary_emb.sin_cached")


@dataclass(frozen=True)
class DecoderSpec:
    """What one architecture of the family differs in."""

    qkv_bias: bool
    o_proj_bias: bool
    mlp_bias: bool
    qk_norm: bool  # RMSNorm over head_dim on every q and k head, before rotary (Qwen3)


def _head_dim(hf_config: Any) -> int:
    return getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads


def _num_kv_heads(hf_config: Any) -> int:
    return getattr(hf_config, "num_key_value_heads", None) or hf_config.num_attention_heads


class DecoderAttention(nn.Module):
    """Rotary GQA attention over this TP rank's heads: ``num_heads``, ``num_kv_heads``, ``q_size`` and
    ``kv_size`` are local; the output is the full [num_tokens, hidden] on every rank."""

    def __init__(self, hf_config: Any, spec: DecoderSpec, rotary_emb: RotaryEmbedding) -> None:
        super().__init__()
        total_num_heads = hf_config.num_attention_heads
        self.head_dim = _head_dim(hf_config)
        self.qkv_proj = QKVLinear(
            hf_config.hidden_size,
            self.head_dim,
            total_num_heads,
            _num_kv_heads(hf_config),
            bias=spec.qkv_bias,
        )
        self.num_heads = self.qkv_proj.num_heads  # this rank's heads
        self.num_kv_heads = self.qkv_proj.num_kv_heads
        self.q_size = self.qkv_proj.q_size
        self.kv_size = self.qkv_proj.kv_size
        self.o_proj = RowLinear(total_num_heads * self.head_dim, hf_config.hidden_size, bias=spec.o_proj_bias)
        self.q_norm: RMSNorm | None = None
        self.k_norm: RMSNorm | None = None
        if spec.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, eps=hf_config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, eps=hf_config.rms_norm_eps)
        self.rotary_emb = rotary_emb
        self.attn = Attention(self.num_heads, self.head_dim, self.head_dim**-0.5, self.num_kv_heads)

    def forward(
        self, positions: torch.Tensor, hidden_states: torch.Tensor, attn_metadata: AttentionMetadata
    ) -> torch.Tensor:
        """positions: [num_tokens]; hidden_states: [num_tokens, hidden] -> [num_tokens, hidden].

        With a bound KV cache, q/k norm, rotary and the cache write are one fused kernel and attention reads
        keys/values from the cache; without one (model tests), the separate layers run.
        """
        return self.attend(positions, self.qkv_proj(hidden_states), attn_metadata)

    def attend(
        self, positions: torch.Tensor, qkv: torch.Tensor, attn_metadata: AttentionMetadata
    ) -> torch.Tensor:
        """:meth:`forward` from the q/k/v projection's output qkv [num_tokens, q_size + 2 * kv_size] on."""
        kv_cache = self.attn.kv_cache
        if kv_cache is not None:
            q = kernels.qk_norm_rope_store(
                qkv,
                positions,
                self.rotary_emb.cos_sin_cache,
                self.q_norm.weight if self.q_norm is not None else None,
                self.k_norm.weight if self.k_norm is not None else None,
                self.q_norm.eps if self.q_norm is not None else 0.0,
                kv_cache[0],
                kv_cache[1],
                attn_metadata.slot_mapping,
                self.num_heads,
                self.num_kv_heads,
                self.head_dim,
                self.rotary_emb.is_neox,
            )  # [num_tokens, q_size]
            out = self.attn(q, None, None, attn_metadata)  # [num_tokens, q_size]
            return self.o_proj(out, reduce=False)  # partial sums when o_proj.defers_reduce
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        if self.q_norm is not None and self.k_norm is not None:
            q = self.q_norm(q.reshape(-1, self.head_dim)).view(-1, self.q_size)  # [num_tokens, q_size]
            k = self.k_norm(k.reshape(-1, self.head_dim)).view(-1, self.kv_size)  # [num_tokens, kv_size]
        q, k = self.rotary_emb(positions, q, k)
        out = self.attn(q, k, v, attn_metadata)  # [num_tokens, q_size]
        return self.o_proj(out, reduce=False)  # partial sums when o_proj.defers_reduce


class DecoderMLP(nn.Module):
    """``down_proj(silu(gate_proj(x)) * up_proj(x))``; the activation runs inside the down projection's kernel
    (``kernels.silu_and_mul_linear``), which takes this rank's ``[gate_local | up_local]`` gate_up output."""

    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool) -> None:
        super().__init__()
        self.gate_up_proj = MergedGateUpLinear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = RowLinear(intermediate_size, hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [num_tokens, hidden] -> [num_tokens, hidden]."""
        gate_up = self.gate_up_proj(x)  # [num_tokens, 2 * intermediate / tp]
        # [num_tokens, hidden]: partial sums when down_proj.defers_reduce
        return self.down_proj(gate_up, silu_mul_input=True, reduce=False)


class DecoderLayer(nn.Module):
    def __init__(self, hf_config: Any, spec: DecoderSpec, rotary_emb: RotaryEmbedding) -> None:
        super().__init__()
        self.self_attn = DecoderAttention(hf_config, spec, rotary_emb)
        self.mlp = DecoderMLP(hf_config.hidden_size, hf_config.intermediate_size, spec.mlp_bias)
        self.input_layernorm = RMSNorm(hf_config.hidden_size, eps=hf_config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(hf_config.hidden_size, eps=hf_config.rms_norm_eps)

    def forward(
        self,
        positions: torch.Tensor,
        hidden_states: torch.Tensor,
        residual: torch.Tensor | None,
        attn_metadata: AttentionMetadata,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (this layer's output, the residual stream before it); their sum is the layer's true output.

        Under tensor parallelism the row-parallel projections leave their outputs as this rank's partial sums
        where they can (no bias): the norm after each sums them over the ranks, fused with the residual add
        (``RMSNorm(..., reduce=True)``). So the returned output is partial when :attr:`output_is_partial`, and a
        ``hidden_states`` input that comes from the previous layer is taken as partial in that case too.

        Without tensor parallelism each norm runs inside the projection after it (``kernels.add_rms_norm_linear``:
        one skinny-GEMM kernel for one-row CUDA batches instead of a norm kernel and a GEMV; two kernels otherwise).
        """
        if self.fuse_norms:
            attn, mlp = self.self_attn, self.mlp
            ln, post_ln = self.input_layernorm, self.post_attention_layernorm
            qkv, residual = kernels.add_rms_norm_linear(
                hidden_states, residual, ln.weight, ln.eps, attn.qkv_proj.weight, attn.qkv_proj.bias
            )  # [num_tokens, q_size + 2 * kv_size], [num_tokens, hidden]
            hidden_states = attn.attend(positions, qkv, attn_metadata)
            gate_up, residual = kernels.add_rms_norm_linear(
                hidden_states,
                residual,
                post_ln.weight,
                post_ln.eps,
                mlp.gate_up_proj.weight,
                mlp.gate_up_proj.bias,
            )  # [num_tokens, 2 * intermediate], [num_tokens, hidden]
            return mlp.down_proj(gate_up, silu_mul_input=True), residual
        if residual is None:
            residual = hidden_states
            hidden_states = self.input_layernorm(hidden_states)
        else:
            hidden_states, residual = self.input_layernorm(
                hidden_states, residual, reduce=self.output_is_partial
            )
        hidden_states = self.self_attn(positions, hidden_states, attn_metadata)
        hidden_states, residual = self.post_attention_layernorm(
            hidden_states, residual, reduce=self.self_attn.o_proj.defers_reduce
        )
        return self.mlp(hidden_states), residual

    @property
    def fuse_norms(self) -> bool:
        """Whether the norms run inside the projections after them: only without tensor parallelism, where no
        all-reduce is fused with the norm instead."""
        return self.self_attn.qkv_proj.tp_size == 1

    @property
    def output_is_partial(self) -> bool:
        """Whether :meth:`forward`'s output is this TP rank's partial sums (every layer answers the same)."""
        return self.mlp.down_proj.defers_reduce


class DecoderModel(nn.Module):
    def __init__(self, hf_config: Any, spec: DecoderSpec) -> None:
        super().__init__()
        self.embed_tokens = VocabEmbedding(hf_config.vocab_size, hf_config.hidden_size)
        rotary_emb = get_rope(hf_config, _head_dim(hf_config))  # one table shared by every layer
        self.layers = nn.ModuleList(
            [DecoderLayer(hf_config, spec, rotary_emb) for _ in range(hf_config.num_hidden_layers)]
        )
        self.norm = RMSNorm(hf_config.hidden_size, eps=hf_config.rms_norm_eps)

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, attn_metadata: AttentionMetadata
    ) -> torch.Tensor:
        hidden_states = self.embed_tokens(input_ids)  # [num_tokens, hidden]
        residual = None
        for layer in self.layers:
            hidden_states, residual = layer(positions, hidden_states, residual, attn_metadata)
        if residual is None:  # no layers
            return self.norm(hidden_states)
        partial = self.layers[-1].output_is_partial
        hidden_states, _ = self.norm(hidden_states, residual, reduce=partial)
        return hidden_states


def _check_config(hf_config: Any) -> None:
    act = getattr(hf_config, "hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"hidden_act={act!r} is not supported; this architecture runs with 'silu' only.")
    layer_types = getattr(hf_config, "layer_types", None) or []
    if getattr(hf_config, "use_sliding_window", False) or any(t != "full_attention" for t in layer_types):
        raise ValueError(
            "sliding-window attention layers are not supported; set use_sliding_window=false in config.json."
        )
    if hf_config.num_attention_heads % _num_kv_heads(hf_config):
        raise ValueError(
            f"num_attention_heads ({hf_config.num_attention_heads}) must be a multiple of "
            f"num_key_value_heads ({_num_kv_heads(hf_config)})."
        )
    local_num_heads(hf_config.num_attention_heads)
    local_num_kv_heads(_num_kv_heads(hf_config))
    divide_for_tp(hf_config.intermediate_size, "intermediate_size")


class DecoderForCausalLM(nn.Module):
    """A HF-compatible decoder-only causal LM. Builds on the current default device and dtype, with
    uninitialised weights: fill them with :meth:`load_weights` (or a dummy initialiser).

    Under tensor parallelism (``init_tensor_parallel`` before construction) each rank builds the same class,
    holds its shard of every split weight, and is fed the full checkpoint; ``forward`` returns the full hidden
    states and ``compute_logits`` the full logits on every rank. Configs whose head counts or intermediate size
    do not split over ``--tensor-parallel-size`` raise ``ValueError`` at construction.
    """

    @classmethod
    def decoder_spec(cls, hf_config: Any) -> DecoderSpec:
        raise NotImplementedError

    def __init__(self, hf_config: Any) -> None:
        super().__init__()
        _check_config(hf_config)
        self.config = hf_config
        self.model = DecoderModel(hf_config, self.decoder_spec(hf_config))
        tie = bool(getattr(hf_config, "tie_word_embeddings", False))
        self.lm_head = LMHead(
            hf_config.vocab_size, hf_config.hidden_size, tie_to=self.model.embed_tokens if tie else None
        )

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, attn_metadata: AttentionMetadata
    ) -> torch.Tensor:
        """input_ids, positions: [num_tokens] long -> final-normed hidden states [num_tokens, hidden]."""
        return self.model(input_ids, positions, attn_metadata)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """hidden_states: [num_rows, hidden] -> logits [num_rows, vocab_size] in the model dtype."""
        return self.lm_head(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Load HF checkpoint tensors (``model.layers.0.self_attn.q_proj.weight``, ``lm_head.weight``, ...).

        Separate q/k/v and gate/up tensors go into the fused parameters; rotary ``inv_freq`` is skipped and
        so is ``lm_head.weight`` when the head is tied. Returns the names (as in ``named_parameters()``) of
        the parameters loaded. Raises ``ValueError`` naming unexpected checkpoint tensors, tensors whose shape
        does not fit, or parameters left without weights.
        """
        params = dict(self.named_parameters())
        loaded: dict[str, set[str | int | None]] = {}
        unexpected: list[str] = []
        for name, tensor in weights:
            if name.endswith(_SKIPPED_SUFFIXES) or (self.lm_head.tied and name.startswith("lm_head.")):
                continue
            target, shard_id = name, None
            for fused, part, sid in _STACKED_PARAMS:
                if part in name:
                    target, shard_id = name.replace(part, fused), sid
                    break
            param = params.get(target)
            if param is None:
                unexpected.append(name)
                continue
            loader = getattr(param, "weight_loader", default_weight_loader)
            try:
                if shard_id is None:
                    loader(param, tensor)
                else:
                    loader(param, tensor, shard_id)
            except ValueError as e:
                raise ValueError(f"{name}: {e}") from e
            loaded.setdefault(target, set()).add(shard_id)
        if unexpected:
            raise ValueError(
                f"the checkpoint holds tensors this {type(self).__name__} does not have: "
                f"{', '.join(sorted(unexpected)[:20])}{' ...' if len(unexpected) > 20 else ''}; "
                "check that config.json's architectures matches the weights."
            )
        missing = self._missing(params, loaded)
        if missing:
            raise ValueError(
                f"the checkpoint lacks weights for: {', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}; "
                "check that the checkpoint is complete and matches config.json."
            )
        return set(loaded)

    @staticmethod
    def _missing(params: dict[str, nn.Parameter], loaded: dict[str, set[str | int | None]]) -> list[str]:
        """HF-style names of the weights still missing after loading."""
        missing: list[str] = []
        for name, param in params.items():
            got = loaded.get(name, set())
            if None in got:
                continue
            shard_ids = getattr(param, "shard_ids", None)
            if shard_ids is None:
                missing.append(name)
                continue
            for fused, part, sid in _STACKED_PARAMS:
                if fused in name and sid in shard_ids and sid not in got:
                    missing.append(name.replace(fused, part))
        return sorted(missing)


class LlamaForCausalLM(DecoderForCausalLM):
    """Llama 2/3: ``attention_bias`` on q/k/v/o, ``mlp_bias`` on the MLP, optional Llama-3 RoPE scaling."""

    @classmethod
    def decoder_spec(cls, hf_config: Any) -> DecoderSpec:
        attention_bias = bool(getattr(hf_config, "attention_bias", False))
        return DecoderSpec(
            qkv_bias=attention_bias,
            o_proj_bias=attention_bias,
            mlp_bias=bool(getattr(hf_config, "mlp_bias", False)),
            qk_norm=False,
        )
