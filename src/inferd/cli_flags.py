"""The flags of ``inferd serve`` (and the engine flags ``inferd bench`` shares): vLLM's names and defaults."""

from __future__ import annotations

import argparse
import json
from typing import Any

from inferd.config import DEFAULT_MODEL, LOAD_FORMATS, parse_human_int
from inferd.server.server_args import REASONING_PARSERS, TOOL_CALL_PARSERS

_LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def _human_int(value: str) -> int:
    try:
        return parse_human_int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number such as 4096 or 32k, got {value!r}") from None


def _origins(value: str | list[str]) -> list[str]:
    """A JSON list (vLLM's form) or a comma-separated list of origins."""
    if isinstance(value, list):
        return [str(v) for v in value]
    text = value.strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as e:
            raise argparse.ArgumentTypeError(f"not a JSON list: {e}") from None
        if not isinstance(parsed, list):
            raise argparse.ArgumentTypeError("expected a JSON list of origins")
        return [str(v) for v in parsed]
    return [part.strip() for part in text.split(",") if part.strip()]


def _one_or_list(values: str | list[str] | None) -> str | list[str] | None:
    """API keys as given: one key stays a string, several a list."""
    if isinstance(values, list) and len(values) == 1:
        return values[0]
    return values


class _ApiKeysAction(argparse.Action):
    """``--api-key KEY [KEY ...]``: a string for one key, a list for several."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:  # fmt: skip
        setattr(namespace, self.dest, _one_or_list(list(values)))


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """Engine flags with vLLM's names; each maps 1:1 onto an ``EngineArgs`` field (see engine_args_from_namespace).

    Adds the positional MODEL and ``--config`` too, so any subcommand that runs an engine takes the same command line.
    """
    parser.add_argument(
        "model_tag",
        nargs="?",
        default=None,
        metavar="MODEL",
        help=f"Hub id, model folder or .gguf file (default {DEFAULT_MODEL}); same as --model.",
    )
    parser.add_argument(
        "--config", default=None, help="YAML file of flags (keys are flag names, e.g. max-model-len)."
    )

    g = parser.add_argument_group("model")
    g.add_argument("--model", default=DEFAULT_MODEL, help="Model to serve (the positional MODEL wins).")
    g.add_argument("--tokenizer", default=None, help="Tokenizer hub id or folder (default: the model's).")
    g.add_argument("--revision", default=None, help="Model revision (branch, tag or commit) on the hub.")
    g.add_argument("--tokenizer-revision", default=None, help="Tokenizer revision on the hub.")
    g.add_argument("--download-dir", default=None, help="Where hub downloads go (default: the HF cache).")
    g.add_argument("--load-format", default="auto", choices=LOAD_FORMATS, help="Weight format.")
    g.add_argument(
        "--dtype",
        default="auto",
        help="auto, bfloat16, float16 or float32 (also half, float, bf16, fp16, fp32).",
    )
    g.add_argument("--seed", type=int, default=0, help="Engine random seed.")
    g.add_argument(
        "--max-model-len",
        type=_human_int,
        default=None,
        help="Context length in tokens; accepts 32k, 1m (default: the model's).",
    )
    g.add_argument(
        "--trust-remote-code",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="Allow model code from the hub.",
    )
    g.add_argument(
        "--served-model-name",
        nargs="+",
        default=None,
        help="Name(s) clients use in 'model' (default: MODEL); the first is used in metrics.",
    )
    g.add_argument(
        "--generation-config",
        default="auto",
        help="'auto' (model's generation_config.json), 'vllm' (ignore it) or a folder holding one.",
    )
    g.add_argument(
        "--max-logprobs", type=int, default=20, help="Largest logprobs / top_logprobs a request may ask."
    )

    g = parser.add_argument_group("cache and memory")
    g.add_argument("--block-size", type=int, default=16, help="Tokens per KV-cache block.")
    g.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="Fraction of GPU memory to use.")
    g.add_argument(
        "--enable-prefix-caching",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Reuse KV blocks of shared prompt prefixes.",
    )
    g.add_argument("--num-gpu-blocks-override", type=int, default=None, help="Fix the number of KV blocks.")
    g.add_argument(
        "--kv-cache-memory-bytes",
        type=_human_int,
        default=None,
        help="KV-cache size in bytes (accepts 4g); overrides --gpu-memory-utilization.",
    )

    g = parser.add_argument_group("scheduler")
    g.add_argument("--max-num-seqs", type=int, default=256, help="Most requests in one batch.")
    g.add_argument(
        "--num-scheduler-steps",
        type=int,
        default=None,
        help="Decode steps run back to back on the device per schedule when nothing is waiting and no request "
        "needs the host between tokens (penalties, logprobs, grammars); 1 turns it off (default: 8 on GPU, 1 on CPU).",
    )
    g.add_argument(
        "--async-scheduling",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Schedule the next multi-step decode round while the current one runs on the device, so the device "
        "does not wait for the host between rounds.",
    )
    g.add_argument(
        "--max-num-batched-tokens",
        type=_human_int,
        default=None,
        help="Token budget of one step (default: 8192 on GPU, 2048 on CPU).",
    )
    g.add_argument(
        "--enable-chunked-prefill",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Split long prefills across steps.",
    )

    g = parser.add_argument_group("device and parallelism")
    g.add_argument(
        "--tensor-parallel-size",
        "-tp",
        type=int,
        default=1,
        help="GPUs per engine replica: the model's layers are split across them (one worker process each).",
    )
    g.add_argument(
        "--data-parallel-size",
        "-dp",
        type=int,
        default=1,
        help="Engine replicas behind one API server, each on its own GPU(s); requests go to the least loaded.",
    )
    g.add_argument(
        "--disable-custom-all-reduce",
        action="store_true",
        default=False,
        help="With tensor parallelism, do every all-reduce through NCCL instead of the one-shot all-reduce in "
        "symmetric memory used for small tensors.",
    )
    g.add_argument(
        "--enforce-eager",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="Never capture CUDA graphs.",
    )
    g.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"), help="Where the model runs.")


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``inferd serve``: the engine's, then the HTTP server's."""
    add_engine_arguments(parser)
    g = parser.add_argument_group("HTTP server")
    g.add_argument("--host", default=None, help="Interface to bind (default: all interfaces).")
    g.add_argument("--port", type=int, default=8000, help="TCP port.")
    g.add_argument(
        "--api-key",
        nargs="+",
        action=_ApiKeysAction,
        default=None,
        metavar="KEY",
        help="Require 'Authorization: Bearer KEY'; several keys may be given, any is accepted (also from "
        "INFERD_API_KEY or VLLM_API_KEY, comma-separated). Put MODEL before this flag.",
    )
    g.add_argument(
        "--metrics-require-auth",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="With --api-key, /metrics needs a key too (/health and /version stay public).",
    )
    g.add_argument(
        "--max-request-body-bytes",
        type=_human_int,
        default=8 << 20,
        help="Larger request bodies get 413 (accepts 8m, 1g); 0 = no limit.",
    )
    g.add_argument("--max-n", type=int, default=128, help="Most completions (n) one request may ask for.")
    g.add_argument(
        "--max-waiting-requests",
        type=int,
        default=1024,
        help="Sequences that may wait for the engine; beyond, new requests get 503 with Retry-After. 0 = no limit.",
    )
    g.add_argument("--chat-template", default=None, help="Chat template file or inline Jinja template.")
    g.add_argument(
        "--allowed-origins",
        type=_origins,
        default=None,
        help='CORS origins, a JSON list or comma list such as ["https://app.example"] (default: none).',
    )
    g.add_argument(
        "--uvicorn-log-level", default="info", choices=_LOG_LEVELS, help="Log level of the server."
    )
    g.add_argument(
        "--enable-log-requests",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="Log each request's prompt and parameters.",
    )
    g.add_argument(
        "--disable-log-requests",
        action="store_true",
        default=False,
        help="Accepted for old vLLM command lines; request logging is off unless enabled.",
    )
    g.add_argument(
        "--shutdown-timeout",
        type=float,
        default=30.0,
        help="Seconds in-flight requests may take to finish after SIGTERM.",
    )
    g = parser.add_argument_group("tool calling and reasoning")
    g.add_argument(
        "--enable-auto-tool-choice",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="Let the model decide when to call tools (tool_choice 'auto'); needs --tool-call-parser.",
    )
    g.add_argument(
        "--tool-call-parser",
        default=None,
        choices=TOOL_CALL_PARSERS,
        help="How tool calls are read from the output: hermes (Qwen2.5/Qwen3 <tool_call>), llama3_json.",
    )
    g.add_argument(
        "--reasoning-parser",
        default=None,
        choices=REASONING_PARSERS,
        help="Move the model's <think>...</think> into the message's reasoning_content.",
    )
