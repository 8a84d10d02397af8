"""Engine configuration: the user's engine arguments (vLLM's names) and the validated configs made from them.

All validation of engine arguments happens here and raises ``ValueError`` with a message naming the argument.
This module does not import torch, so the scheduler and the KV cache manager can use it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from inferd.models.source import ModelSource

DEFAULT_MODEL = "Qwen/Qwen3-0.6B"
_DTYPES = ("auto", "bfloat16", "float16", "float32", "half", "float", "bf16", "fp16", "fp32")
_DTYPE_ALIASES = {
    "half": "float16",
    "fp16": "float16",
    "float": "float32",
    "fp32": "float32",
    "bf16": "bfloat16",
}
LOAD_FORMATS = ("auto", "safetensors", "gguf", "dummy")
_CPU_KV_CACHE_DEFAULT_BYTES = 4 << 30


@dataclass(frozen=True)
class ModelConfig:
    model: str  # as the user named it: hub id, folder or .gguf file
    source: ModelSource = field(repr=False)  # resolved local files, hf config, tokenizer location
    dtype: str  # "bfloat16" | "float16" | "float32" (resolved from "auto")
    max_model_len: int
    seed: int
    load_format: str  # resolved: "safetensors" | "gguf" | "dummy"
    generation_config: str  # "auto" | "vllm" | a folder holding generation_config.json
    served_model_names: tuple[str, ...]
    max_logprobs: int
    trust_remote_code: bool

    @property
    def hf_config(self) -> Any:
        return self.source.hf_config

    @property
    def architecture(self) -> str:
        archs = getattr(self.hf_config, "architectures", None) or []
        return archs[0] if archs else ""


@dataclass(frozen=True)
class CacheConfig:
    block_size: int = 16
    enable_prefix_caching: bool = True
    gpu_memory_utilization: float = 0.9
    num_gpu_blocks_override: int | None = None
    kv_cache_memory_bytes: int | None = None  # explicit KV pool size; overrides gpu_memory_utilization


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    max_model_len: int = 4096
    enable_chunked_prefill: bool = True
    num_scheduler_steps: int = 1  # decode steps run back to back on the device per schedule
    async_scheduling: bool = True  # schedule the next multi-step round while one runs on the device


@dataclass(frozen=True)
class ParallelConfig:
    tensor_parallel_size: int = 1  # GPUs (worker processes) per engine replica, one TP group
    data_parallel_size: int = 1  # engine replicas behind one frontend
    disable_custom_all_reduce: bool = False  # True: every TP all-reduce through NCCL (no symmetric memory)

    @property
    def world_size(self) -> int:
        """Devices one engine replica uses."""
        return self.tensor_parallel_size


@dataclass(frozen=True)
class DeviceConfig:
    device: str = "cpu"  # "cuda" | "cpu"


@dataclass(frozen=True)
class EngineConfig:
    model_config: ModelConfig
    cache_config: CacheConfig
    scheduler_config: SchedulerConfig
    parallel_config: ParallelConfig
    device_config: DeviceConfig
    enforce_eager: bool = False


@dataclass
class EngineArgs:
    """Engine arguments, named as vLLM's ``EngineArgs`` so scripts and command lines port unchanged."""

    model: str = DEFAULT_MODEL
    tokenizer: str | None = None
    revision: str | None = None
    tokenizer_revision: str | None = None
    download_dir: str | None = None
    load_format: str = "auto"
    dtype: str = "auto"
    seed: int = 0
    max_model_len: int | None = None
    block_size: int = 16
    enable_prefix_caching: bool = True
    gpu_memory_utilization: float = 0.9
    num_gpu_blocks_override: int | None = None
    kv_cache_memory_bytes: int | None = None
    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None
    enable_chunked_prefill: bool = True
    num_scheduler_steps: int | None = None  # None: 8 on CUDA, 1 on CPU
    async_scheduling: bool = True
    enforce_eager: bool = False
    trust_remote_code: bool = False
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    disable_custom_all_reduce: bool = False
    generation_config: str = "auto"
    served_model_name: str | list[str] | None = None
    max_logprobs: int = 20
    device: str = "auto"

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> EngineArgs:
        unknown = set(kwargs) - cls.field_names()
        if unknown:
            raise ValueError(
                f"Unknown engine argument(s): {', '.join(sorted(unknown))}. "
                f"Known: {', '.join(sorted(cls.field_names()))}."
            )
        return cls(**kwargs)

    def _verify_plain(self) -> None:
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}; got {self.dtype!r}.")
        if self.load_format not in LOAD_FORMATS:
            raise ValueError(
                f"load_format must be one of {', '.join(LOAD_FORMATS)}; got {self.load_format!r}."
            )
        if self.block_size < 1 or self.block_size & (self.block_size - 1) or self.block_size > 256:
            raise ValueError(f"block_size must be a power of two from 1 to 256; got {self.block_size}.")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1]; got {self.gpu_memory_utilization}.")
        if self.num_gpu_blocks_override is not None and self.num_gpu_blocks_override < 2:
            raise ValueError(
                f"num_gpu_blocks_override must be at least 2; got {self.num_gpu_blocks_override}."
            )
        if self.kv_cache_memory_bytes is not None and self.kv_cache_memory_bytes <= 0:
            raise ValueError(f"kv_cache_memory_bytes must be positive; got {self.kv_cache_memory_bytes}.")
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be at least 1; got {self.max_num_seqs}.")
        if self.max_num_batched_tokens is not None and self.max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens must be at least 1; got {self.max_num_batched_tokens}.")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError(f"max_model_len must be at least 1; got {self.max_model_len}.")
        if self.num_scheduler_steps is not None and not 1 <= self.num_scheduler_steps <= 64:
            raise ValueError(f"num_scheduler_steps must be from 1 to 64; got {self.num_scheduler_steps}.")
        if self.max_logprobs < 0:
            raise ValueError(f"max_logprobs must be non-negative; got {self.max_logprobs}.")
        if not 1 <= self.tensor_parallel_size <= 64:
            raise ValueError(f"tensor_parallel_size must be from 1 to 64; got {self.tensor_parallel_size}.")
        if not 1 <= self.data_parallel_size <= 64:
            raise ValueError(f"data_parallel_size must be from 1 to 64; got {self.data_parallel_size}.")
        if self.device not in ("auto", "cuda", "cpu"):
            raise ValueError(f"device must be 'auto', 'cuda' or 'cpu'; got {self.device!r}.")

    def resolve_device(self) -> str:
        if self.device != "auto":
            if self.device == "cuda":
                import torch

                if not torch.cuda.is_available():
                    raise ValueError(
                        "device='cuda' was asked for but no CUDA GPU is visible; use device='cpu'."
                    )
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def create_engine_config(self) -> EngineConfig:
        """Validate the arguments, fetch the model's config and tokenizer files, and build the configs."""
        from inferd.models.source import resolve_model_source

        self._verify_plain()
        device = self.resolve_device()
        if device == "cuda":
            import torch

            if self.tensor_parallel_size > torch.cuda.device_count():
                raise ValueError(
                    f"tensor_parallel_size={self.tensor_parallel_size} needs that many GPUs but "
                    f"{torch.cuda.device_count()} are visible; lower --tensor-parallel-size."
                )
        source = resolve_model_source(
            self.model,
            revision=self.revision,
            download_dir=self.download_dir,
            load_format=self.load_format,
            tokenizer=self.tokenizer,
            tokenizer_revision=self.tokenizer_revision,
            trust_remote_code=self.trust_remote_code,
        )
        hf_config = source.hf_config
        dtype = self._resolve_dtype(source.checkpoint_dtype, device)
        derived_max = _derive_max_model_len(hf_config)
        if self.max_model_len is None:
            max_model_len = derived_max
        else:
            max_model_len = self.max_model_len
            if max_model_len > derived_max and not os.environ.get("INFERD_ALLOW_LONG_MAX_MODEL_LEN"):
                raise ValueError(
                    f"max_model_len={max_model_len} is larger than the model's maximum context "
                    f"({derived_max}, from max_position_embeddings); lower --max-model-len."
                )
        names = self.served_model_name
        if names is None or names == []:
            served = (self.model,)
        elif isinstance(names, str):
            served = (names,)
        else:
            served = tuple(names)
        model_config = ModelConfig(
            model=self.model,
            source=source,
            dtype=dtype,
            max_model_len=max_model_len,
            seed=self.seed,
            load_format=source.load_format,
            generation_config=self.generation_config,
            served_model_names=served,
            max_logprobs=self.max_logprobs,
            trust_remote_code=self.trust_remote_code,
        )
        max_num_batched_tokens = self.max_num_batched_tokens
        if max_num_batched_tokens is None:
            max_num_batched_tokens = 8192 if device == "cuda" else 2048
        if not self.enable_chunked_prefill and max_num_batched_tokens < max_model_len:
            raise ValueError(
                f"max_num_batched_tokens ({max_num_batched_tokens}) is smaller than max_model_len "
                f"({max_model_len}) with chunked prefill disabled; raise --max-num-batched-tokens or "
                "enable chunked prefill."
            )
        return EngineConfig(
            model_config=model_config,
            cache_config=CacheConfig(
                block_size=self.block_size,
                enable_prefix_caching=self.enable_prefix_caching,
                gpu_memory_utilization=self.gpu_memory_utilization,
                num_gpu_blocks_override=self.num_gpu_blocks_override,
                kv_cache_memory_bytes=self.kv_cache_memory_bytes
                or (_CPU_KV_CACHE_DEFAULT_BYTES if device == "cpu" else None),
            ),
            scheduler_config=SchedulerConfig(
                max_num_seqs=self.max_num_seqs,
                max_num_batched_tokens=max_num_batched_tokens,
                max_model_len=max_model_len,
                enable_chunked_prefill=self.enable_chunked_prefill,
                num_scheduler_steps=self.num_scheduler_steps or (8 if device == "cuda" else 1),
                async_scheduling=self.async_scheduling,
            ),
            parallel_config=ParallelConfig(
                tensor_parallel_size=self.tensor_parallel_size,
                data_parallel_size=self.data_parallel_size,
                disable_custom_all_reduce=self.disable_custom_all_reduce,
            ),
            device_config=DeviceConfig(device=device),
            enforce_eager=self.enforce_eager or device == "cpu",
        )

    def _resolve_dtype(self, checkpoint_dtype: str | None, device: str) -> str:
        dtype = _DTYPE_ALIASES.get(self.dtype, self.dtype)
        if dtype != "auto":
            return dtype
        if device == "cpu":
            return "float32"
        if checkpoint_dtype in ("bfloat16", "float16"):
            return checkpoint_dtype
        return "bfloat16"


def _derive_max_model_len(hf_config: Any) -> int:
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = getattr(hf_config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def parse_human_int(value: str | int) -> int:
    """``32k`` → 32768 (binary, as vLLM), ``1m`` → 1048576, ``32K`` as ``32k``, ``25.6k`` → 25600 (decimal)."""
    if isinstance(value, int):
        return value
    text = str(value).strip().lower().replace("_", "")
    if not text:
        raise ValueError("expected a number such as 4096 or 32k")
    mult = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(text[-1])
    if mult is None:
        return int(text)
    number = text[:-1]
    if "." in number:
        dec = {"k": 1000, "m": 1000**2, "g": 1000**3}[text[-1]]
        return int(float(number) * dec)
    return int(number) * mult
