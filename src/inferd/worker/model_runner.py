"""Model runner: keeps the batch's per-request state, turns a SchedulerOutput into flat tensors, runs the model
and the sampler, and returns a ModelRunnerOutput."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable

import numpy as np
import torch

from inferd import kernels
from inferd.config import EngineConfig
from inferd.distributed.parallel_state import local_num_kv_heads, tp_broadcast, tp_min_int, tp_size
from inferd.engine.core_types import TokenLogprobs
from inferd.engine.scheduler_output import SchedulerOutput
from inferd.layers.attention import bind_kv_caches
from inferd.layers.attention_metadata import AttentionMetadata
from inferd.layers.sampler import (
    Sampler,
    SamplerOutput,
    SamplingMetadata,
    compute_prompt_logprobs,
    logprobs_to_lists,
)
from inferd.models.registry import get_model_class
from inferd.models.source import load_tokenizer
from inferd.models.weight_utils import initialize_dummy_weights, iter_weights
from inferd.structured_output.manager import StructuredOutputManager
from inferd.worker.cuda_graph import CudaGraphRunner
from inferd.worker.memory_profiler import profile_num_gpu_blocks
from inferd.worker.model_runner_output import ModelRunnerOutput
from inferd.worker.sampling_batch import SamplingBatch
from inferd.worker.step_inputs import RequestState, StepInputs, multistep_ok, prepare_step_inputs

logger = logging.getLogger(__name__)

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class ModelRunner:
    """Owns the model, its KV cache and the sampling state on one device."""

    def __init__(self, config: EngineConfig, rank: int = 0) -> None:
        self.config = config
        self.rank = rank  # tensor-parallel rank; the caller has joined the process group when tp > 1
        self.model_config = config.model_config
        self.cache_config = config.cache_config
        self.scheduler_config = config.scheduler_config
        self.device = torch.device(config.device_config.device)
        if self.device.type == "cuda":
            start = time.perf_counter()
            self.device = torch.device("cuda", rank)
            torch.cuda.set_device(self.device)
            torch.empty(1, device=self.device)  # creates the CUDA context now, so its cost shows in the log
            logger.info("CUDA context on %s in %.1f s", self.device, time.perf_counter() - start)
        self.dtype = _DTYPES[self.model_config.dtype]
        self.block_size = self.cache_config.block_size
        hf_config = self.model_config.hf_config
        self.vocab_size: int = hf_config.vocab_size
        self.num_layers: int = hf_config.num_hidden_layers
        self.num_kv_heads: int = local_num_kv_heads(  # this rank's share under tensor parallelism
            getattr(hf_config, "num_key_value_heads", None) or hf_config.num_attention_heads
        )
        self.head_dim: int = getattr(hf_config, "head_dim", None) or (
            hf_config.hidden_size // hf_config.num_attention_heads
        )
        self.kernel_backend = kernels.select_backend(self.device.type)
        self.model = self._load_model()
        self.sampler = Sampler()
        self.sampling_batch = SamplingBatch(self.vocab_size, self.device)
        # Grammars (structured outputs): the tokenizer is loaded in the background on the first such request.
        source = self.model_config.source
        self.structured_output = StructuredOutputManager(
            lambda: load_tokenizer(source), self.vocab_size, self.device
        )
        self.requests: dict[str, RequestState] = {}
        self._parked: set[str] = set()  # preempted: sampling state (seeded generators) kept until they resume
        self.kv_caches: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.graph_runner: CudaGraphRunner | None = None
        # Tensor-parallel worker ranks: rounds launched and not yet resolved, oldest first.
        self._queued: deque[PendingRound] = deque()

    # ------------------------------------------------------------------ setup
    def _load_model(self) -> torch.nn.Module:
        cls = get_model_class(getattr(self.model_config.hf_config, "architectures", None))
        start = time.perf_counter()
        old_dtype = torch.get_default_dtype()
        torch.manual_seed(self.model_config.seed)
        try:
            torch.set_default_dtype(self.dtype)
            with torch.device(self.device):
                model = cls(self.model_config.hf_config)
        finally:
            torch.set_default_dtype(old_dtype)
        if self.model_config.load_format == "dummy":
            initialize_dummy_weights(model, seed=self.model_config.seed)
        else:
            model.load_weights(iter_weights(self.model_config.source))
        model.eval()
        logger.info(
            "Loaded %s (%s, %s, %s kernels) in %.1f s",
            self.model_config.model,
            cls.__name__,
            self.model_config.dtype,
            self.kernel_backend,
            time.perf_counter() - start,
        )
        return model

    def kv_block_bytes(self) -> int:
        """Bytes of one KV block across all layers (K and V)."""
        elem = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.block_size * self.num_kv_heads * self.head_dim * elem

    def determine_num_blocks(self) -> int:
        """How many KV blocks fit (on every tensor-parallel rank): the override, an explicit byte budget, or what
        the memory profile leaves."""
        return tp_min_int(self._num_blocks_here(), self.device)

    def _num_blocks_here(self) -> int:
        if self.cache_config.num_gpu_blocks_override is not None:
            return self.cache_config.num_gpu_blocks_override
        block_bytes = self.kv_block_bytes()
        if self.cache_config.kv_cache_memory_bytes is not None:
            budget = self.cache_config.kv_cache_memory_bytes
            # Never more than every sequence at full length needs (keeps CPU memory modest).
            needed = self.scheduler_config.max_num_seqs * (
                -(-self.scheduler_config.max_model_len // self.block_size)
            )
            return max(2, min(budget // block_bytes, needed + 1))
        if self.device.type != "cuda":
            raise ValueError("kv_cache_memory_bytes is required off the GPU.")
        return profile_num_gpu_blocks(self, block_bytes)

    def initialize_kv_cache(self, num_blocks: int) -> None:
        shape = (2, num_blocks, self.block_size, self.num_kv_heads, self.head_dim)
        self.kv_caches = []
        for _ in range(self.num_layers):
            kv = torch.zeros(shape, dtype=self.dtype, device=self.device)
            self.kv_caches.append((kv[0], kv[1]))
        bind_kv_caches(self.model, self.kv_caches)
        self.num_blocks = num_blocks

    def capture_cuda_graphs(self) -> None:
        """Capture decode graphs (CUDA only; call after initialize_kv_cache)."""
        if self.device.type != "cuda" or self.config.enforce_eager:
            return
        self.graph_runner = CudaGraphRunner(
            self.model,
            self.scheduler_config.max_num_seqs,
            self.scheduler_config.max_model_len,
            self.block_size,
            self.device,
        )
        self.graph_runner.capture()

    # ------------------------------------------------------------------ per step
    def _update_states(self, so: SchedulerOutput) -> None:
        for req_id in so.finished_req_ids:
            if self.requests.pop(req_id, None) is not None or req_id in self._parked:
                self._parked.discard(req_id)
                self.sampling_batch.remove_request(req_id, finished=True)
                self.structured_output.remove_request(req_id)
        for req_id in so.preempted_req_ids:
            if self.requests.pop(req_id, None) is not None:
                self._parked.add(req_id)
                self.sampling_batch.remove_request(req_id, finished=False)
        for new in so.scheduled_new_reqs:
            if new.req_id in self.requests:  # resumed without an explicit preemption notice
                self.sampling_batch.remove_request(new.req_id, finished=False)
            self._parked.discard(new.req_id)
            params = new.sampling_params
            self.requests[new.req_id] = RequestState(
                token_ids=new.prompt_token_ids + new.output_token_ids,
                num_prompt_tokens=len(new.prompt_token_ids),
                block_ids=list(new.block_ids),
                num_computed_tokens=new.num_computed_tokens,
                prompt_logprobs=params.prompt_logprobs,
                logprobs=params.logprobs,
                multistep_ok=multistep_ok(params),
                min_tokens=params.min_tokens,
            )
            self.sampling_batch.add_request(
                new.req_id, params, new.prompt_token_ids, new.output_token_ids, new.eos_token_id
            )
            self.structured_output.add_request(  # no-op when resumed after preemption (matcher kept)
                new.req_id, params, new.eos_token_id, new.prompt_token_ids, new.output_token_ids
            )
        for cached in so.scheduled_cached_reqs:
            state = self.requests[cached.req_id]
            state.block_ids.extend(cached.new_block_ids)
            state.num_computed_tokens = cached.num_computed_tokens

    def _make_metadata(
        self,
        slots: np.ndarray,
        query_start_loc: np.ndarray,
        seq_lens: np.ndarray,
        block_tables: np.ndarray,
        max_query_len: int,
        max_seq_len: int,
    ) -> AttentionMetadata:
        dev = self.device
        return AttentionMetadata(
            slot_mapping=torch.from_numpy(slots).to(dev, non_blocking=True),
            query_start_loc=torch.from_numpy(query_start_loc.astype(np.int32)).to(dev, non_blocking=True),
            seq_lens=torch.from_numpy(seq_lens.astype(np.int32)).to(dev, non_blocking=True),
            block_tables=torch.from_numpy(block_tables).to(dev, non_blocking=True),
            max_query_len=int(max_query_len),
            max_seq_len=int(max_seq_len),
            num_actual_tokens=int(query_start_loc[-1]),
            query_start_loc_cpu=query_start_loc.tolist(),
            seq_lens_cpu=seq_lens.tolist(),
        )

    def _forward_eager(self, inputs: StepInputs) -> torch.Tensor:
        """Hidden states [num_tokens, hidden] for the whole step."""
        dev = self.device
        meta = self._make_metadata(
            inputs.slots,
            inputs.query_start_loc,
            inputs.seq_lens,
            inputs.block_tables,
            inputs.max_query_len,
            int(inputs.seq_lens.max()),
        )
        input_ids = torch.from_numpy(inputs.input_ids).to(dev, non_blocking=True)
        positions = torch.from_numpy(inputs.positions).to(dev, non_blocking=True)
        return self.model(input_ids, positions, meta)

    def can_run_multistep(self, req_ids: Iterable[str]) -> bool:
        """Whether these (already running) requests can decode several tokens without the host in between."""
        for req_id in req_ids:
            state = self.requests.get(req_id)
            if state is None or not state.multistep_ok:
                return False
            if state.min_tokens > len(state.token_ids) - state.num_prompt_tokens:
                return False
        return True

    def execute_model(self, so: SchedulerOutput, num_steps: int = 1) -> ModelRunnerOutput:
        """Run one step, or ``num_steps`` decode steps back to back (see Scheduler.add_decode_lookahead)."""
        return self.launch_model(so, num_steps).result()

    @torch.inference_mode()
    def launch_model(
        self, so: SchedulerOutput, num_steps: int = 1, continues: PendingRound | None = None
    ) -> PendingRound:
        """Start a step; its output comes from ``.result()``. A multi-step decode round (``num_steps`` > 1) is
        only queued on the device here, so the host is free until ``result()``: ``continues`` is then the round
        still running whose last sampled tokens are this round's inputs (Scheduler.schedule_continuation; the
        host does not know them yet). Rounds must be resolved with ``result()`` in launch order."""
        self._update_states(so)
        if so.total_num_scheduled_tokens == 0:
            return PendingRound(self, ModelRunnerOutput(req_ids=[], sampled_token_ids=[]))
        if num_steps > 1:
            return self._launch_multistep(so, num_steps, continues)
        assert continues is None, "only a multi-step decode round continues a running round"
        return PendingRound(self, self._execute_step(so))

    def launch_queued(self, so: SchedulerOutput, num_steps: int, continued: bool) -> None:
        """``launch_model`` for a tensor-parallel worker rank: the round is kept here (``continued``: it continues
        the round launched last) until :meth:`resolve_queued`, which the driver calls once per launch, in order."""
        continues = self._queued[-1] if continued else None
        self._queued.append(self.launch_model(so, num_steps, continues))

    def resolve_queued(self) -> None:
        """Wait for this rank's oldest launched round and apply its tokens (see :meth:`launch_queued`)."""
        self._queued.popleft().result()

    def _execute_step(self, so: SchedulerOutput) -> ModelRunnerOutput:
        """One step (prefill chunks and/or decodes), synchronously."""
        inputs = prepare_step_inputs(so, self.requests, self.block_size)
        num_seqs = len(inputs.seq_lens)
        prompt_logprobs: dict[str, list[TokenLogprobs | None]] = {}
        if (
            self.graph_runner is not None
            and inputs.max_query_len == 1
            and len(inputs.sample_rows) == num_seqs
            and not inputs.prompt_logprob_rows
            and self.graph_runner.can_run(num_seqs)
        ):
            logits = self.graph_runner.run(
                inputs.input_ids, inputs.positions, inputs.slots, inputs.seq_lens, inputs.block_tables
            )
        else:
            hidden = self._forward_eager(inputs)
            prompt_logprobs = self._prompt_logprobs(hidden, inputs)
            logits = None
            if inputs.sample_req_ids:
                rows = torch.tensor(inputs.sample_rows, dtype=torch.long).to(self.device, non_blocking=True)
                logits = self.model.compute_logits(hidden[rows])
        sampled: dict[str, int] = {}
        sample_logprobs: dict[str, TokenLogprobs] = {}
        if logits is not None:
            metadata = self.sampling_batch.make_metadata(inputs.sample_req_ids)
            self.structured_output.apply_bitmask(logits, inputs.sample_req_ids)  # grammar rows only, in place
            out = self._sample(logits, metadata)
            token_ids = out.sampled_token_ids.tolist()
            if out.logprobs is not None:
                nums = [self.requests[r].logprobs for r in inputs.sample_req_ids]
                lists = logprobs_to_lists(out.logprobs, [n or 0 for n in nums])
                for req_id, n, lp in zip(inputs.sample_req_ids, nums, lists):
                    if n is not None:
                        sample_logprobs[req_id] = lp
            for req_id, tok in zip(inputs.sample_req_ids, token_ids):
                sampled[req_id] = tok
                self.requests[req_id].token_ids.append(tok)
                self.sampling_batch.append_output_token(req_id, tok)
                self.structured_output.accept_token(req_id, tok)
        req_ids = list(so.num_scheduled_tokens)
        for req_id in req_ids:
            self.requests[req_id].num_computed_tokens += so.num_scheduled_tokens[req_id]
        return ModelRunnerOutput(
            req_ids=req_ids,
            sampled_token_ids=[[sampled[r]] if r in sampled else [] for r in req_ids],
            logprobs=[[sample_logprobs[r]] if r in sample_logprobs else None for r in req_ids]
            if sample_logprobs
            else None,
            prompt_logprobs=prompt_logprobs,
        )

    def _launch_multistep(
        self, so: SchedulerOutput, num_steps: int, continues: PendingRound | None
    ) -> PendingRound:
        """Queue ``num_steps`` decode steps; each step's sampled tokens feed the next on the device. Nothing here
        waits for the device: the tokens come back through one pinned copy that ``PendingRound.result()`` waits for."""
        inputs = prepare_step_inputs(
            so, self.requests, self.block_size, inputs_on_device=continues is not None
        )
        req_ids = inputs.sample_req_ids
        n = len(req_ids)
        assert inputs.max_query_len == 1 and n == len(inputs.seq_lens), "multi-step needs a decode-only batch"
        first_ids = None if continues is None else continues.last_tokens_for(req_ids)
        bs = self.block_size
        positions = inputs.positions[None, :] + np.arange(num_steps)[:, None]  # [num_steps, n]
        slots = (
            inputs.block_tables[np.arange(n)[None, :], positions // bs].astype(np.int64) * bs + positions % bs
        )
        metadata = self.sampling_batch.make_metadata(req_ids)
        use_graph = self.graph_runner is not None and self.graph_runner.can_run(n)
        slots_dev = self._to_device(slots)  # one copy for all steps
        step_tokens: list[torch.Tensor] = []
        for i in range(num_steps):
            if use_graph:
                assert self.graph_runner is not None
                if i == 0:
                    logits = self.graph_runner.run(
                        inputs.input_ids,
                        inputs.positions,
                        inputs.slots,
                        inputs.seq_lens,
                        inputs.block_tables,
                        input_ids_device=first_ids,
                        max_seq_len=int(inputs.seq_lens.max()) + num_steps - 1,  # the round's last step
                    )
                else:
                    logits = self.graph_runner.run_next(step_tokens[-1], slots_dev[i])
            else:
                if i > 0:
                    input_ids = step_tokens[-1]
                elif first_ids is not None:
                    input_ids = first_ids
                else:
                    input_ids = self._to_device(inputs.input_ids)
                meta = self._make_metadata(
                    np.ascontiguousarray(slots[i]),
                    inputs.query_start_loc,
                    inputs.seq_lens + i,
                    inputs.block_tables,
                    1,
                    int(inputs.seq_lens.max()) + i,
                )
                hidden = self.model(input_ids, self._to_device(np.ascontiguousarray(positions[i])), meta)
                logits = self.model.compute_logits(hidden)
            step_tokens.append(self._sample(logits, metadata).sampled_token_ids)
        for req_id in req_ids:
            self.requests[req_id].num_computed_tokens += num_steps
        return PendingRound(self, None, req_ids, step_tokens)

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        """A host array on the device without waiting for the device (a pinned staging copy on CUDA)."""
        t = torch.from_numpy(array)
        if self.device.type != "cuda":
            return t
        return t.pin_memory().to(self.device, non_blocking=True)

    def _finish_multistep(self, req_ids: list[str], tokens: list[list[int]]) -> ModelRunnerOutput:
        """A multi-step round's tokens reached the host: extend the requests' known tokens. Requests finished or
        aborted since the round was launched are gone already (their tokens are dropped by the scheduler)."""
        for req_id, row in zip(req_ids, tokens):
            state = self.requests.get(req_id)
            if state is None:
                continue
            state.token_ids.extend(row)
            for tok in row:
                self.sampling_batch.append_output_token(req_id, tok)
        return ModelRunnerOutput(req_ids=req_ids, sampled_token_ids=tokens)

    def _sample(self, logits: torch.Tensor, metadata: SamplingMetadata) -> SamplerOutput:
        """Sample; under tensor parallelism every rank then takes rank 0's tokens, so all ranks stay in step
        whatever their random streams. (All-greedy batches need no broadcast: every rank holds bit-identical
        gathered logits, and argmax is deterministic.)"""
        out = self.sampler(logits, metadata)
        if tp_size() > 1 and not metadata.all_greedy:
            tp_broadcast(out.sampled_token_ids, src=0)
        return out

    def _prompt_logprobs(
        self, hidden: torch.Tensor, inputs: StepInputs
    ) -> dict[str, list[TokenLogprobs | None]]:
        result: dict[str, list[TokenLogprobs | None]] = {}
        for req_id, (rows, targets, start) in inputs.prompt_logprob_rows.items():
            state = self.requests[req_id]
            k = state.prompt_logprobs or 0
            chunk: list[TokenLogprobs | None] = [None] if start == 0 else []
            if rows:
                logits = self.model.compute_logits(hidden[torch.tensor(rows, device=self.device)])
                target_ids = torch.tensor([state.token_ids[p] for p in targets], device=self.device)
                tensors = compute_prompt_logprobs(logits, target_ids, k)
                chunk.extend(logprobs_to_lists(tensors, [k] * len(rows)))
            result[req_id] = chunk
        return result


class PendingRound:
    """A launched step: ``result()`` waits for its tokens (once) and returns the ModelRunnerOutput.
    ``before_result``, when set, is called once first (tensor parallelism: tell the workers to resolve their copy)."""

    def __init__(
        self,
        runner: ModelRunner,
        output: ModelRunnerOutput | None,
        req_ids: list[str] | None = None,
        step_tokens: list[torch.Tensor] | None = None,
    ) -> None:
        self._runner = runner
        self._output = output
        self.before_result: Callable[[], None] | None = None
        self.req_ids = req_ids or []
        self._last_tokens: torch.Tensor | None = None
        self._host: torch.Tensor | None = None
        self._event: torch.cuda.Event | None = None
        if step_tokens is not None:
            self._last_tokens = step_tokens[-1]  # [n] on the device: the next round's inputs
            tokens = torch.stack(step_tokens, dim=1)  # [n, num_steps]
            if tokens.is_cuda:
                self._host = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
                self._host.copy_(tokens, non_blocking=True)
                self._event = torch.cuda.Event()
                self._event.record()
            else:
                self._host = tokens

    def last_tokens_for(self, req_ids: list[str]) -> torch.Tensor:
        """The last sampled token of each of ``req_ids`` (all in this round), on the device, in that order."""
        assert self._last_tokens is not None, "not a multi-step round"
        if req_ids == self.req_ids:
            return self._last_tokens
        row = {r: i for i, r in enumerate(self.req_ids)}
        index = torch.tensor([row[r] for r in req_ids], dtype=torch.long)
        if self._last_tokens.is_cuda:
            index = index.pin_memory().to(self._last_tokens.device, non_blocking=True)
        return self._last_tokens.index_select(0, index)

    def result(self) -> ModelRunnerOutput:
        if self.before_result is not None:
            notify, self.before_result = self.before_result, None
            notify()
        if self._output is None:
            assert self._host is not None
            if self._event is not None:
                self._event.synchronize()
            self._output = self._runner._finish_multistep(self.req_ids, self._host.tolist())
            self._host = None
        return self._output
