"""The ``inferd`` command: ``inferd serve [MODEL] [flags]`` with vLLM's flag names and defaults.

Every flag can also come from the environment (``INFERD_<FLAG_WITH_UNDERSCORES>``, e.g. ``INFERD_MAX_MODEL_LEN=32k``)
or from ``--config file.yaml`` (keys are flag names). Precedence: command line > environment > config file > default.
Dashes and underscores in flag names are interchangeable (``--max_model_len`` is ``--max-model-len``).
Subcommands register in ``SUBCOMMANDS``; each brings its arguments and its ``run`` function.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from inferd import __version__
from inferd.config import DEFAULT_MODEL, LOAD_FORMATS, EngineArgs, parse_human_int
from inferd.server.server_args import REASONING_PARSERS, TOOL_CALL_PARSERS

ENV_PREFIX = "INFERD_"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults only where they say something (and never the API key)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        default = action.default
        if default is None or default is False or default is argparse.SUPPRESS or action.dest == "api_key":
            return help_text
        return super()._get_help_string(action) or help_text


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
        "--tensor-parallel-size", "-tp", type=int, default=1, help="GPUs per engine (only 1 for now)."
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


def _exit_0(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def run_serve(args: argparse.Namespace) -> int:
    # A SIGTERM before the server installs its own handlers has nothing to drain: exit 0, as after a drain.
    signal.signal(signal.SIGTERM, _exit_0)
    from inferd.server.chat_template import load_chat_template
    from inferd.server.launcher import run_server
    from inferd.server.server_args import ServerArgs

    parser: argparse.ArgumentParser = args._parser
    engine_args = engine_args_from_namespace(args, parser)
    try:
        server_args = ServerArgs(
            host=args.host,
            port=args.port,
            api_key=_one_or_list(args.api_key) or None,
            metrics_require_auth=args.metrics_require_auth,
            max_request_body_bytes=args.max_request_body_bytes,
            max_n=args.max_n,
            max_waiting_requests=args.max_waiting_requests,
            chat_template=load_chat_template(args.chat_template),
            allowed_origins=tuple(args.allowed_origins or ()),
            uvicorn_log_level=args.uvicorn_log_level,
            enable_log_requests=args.enable_log_requests and not args.disable_log_requests,
            shutdown_timeout=args.shutdown_timeout,
            enable_auto_tool_choice=args.enable_auto_tool_choice,
            tool_call_parser=args.tool_call_parser,
            reasoning_parser=args.reasoning_parser,
        )
    except ValueError as e:
        parser.error(str(e))
    _configure_logging(args.uvicorn_log_level)
    return run_server(server_args, engine_args)


def engine_args_from_namespace(args: argparse.Namespace, parser: argparse.ArgumentParser) -> EngineArgs:
    """EngineArgs from flags added by add_engine_arguments; a value EngineArgs refuses ends the program (status 2)."""
    fields = {name: getattr(args, name) for name in EngineArgs.field_names() if hasattr(args, name)}
    fields["model"] = getattr(args, "model_tag", None) or args.model
    engine_args = EngineArgs(**fields)
    try:
        engine_args._verify_plain()  # checks that need no model files; the rest fail at load time
    except ValueError as e:
        parser.error(str(e))
    return engine_args


@dataclass(frozen=True)
class Subcommand:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    from inferd.bench.cli import add_bench_arguments

    add_bench_arguments(parser)


def _run_bench(args: argparse.Namespace) -> int:
    from inferd.bench.cli import run_bench

    return run_bench(args)


SUBCOMMANDS: list[Subcommand] = [
    Subcommand("serve", "Serve a model over an OpenAI-compatible HTTP API.", add_serve_arguments, run_serve),
    Subcommand(
        "bench", "Benchmark throughput, latency, or a running server.", _add_bench_arguments, _run_bench
    ),
]


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The ``inferd`` parser and its subcommand parsers by name."""
    parser = argparse.ArgumentParser(
        prog="inferd", description="A fast OpenAI-compatible LLM inference server."
    )
    parser.add_argument("--version", action="version", version=f"inferd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parsers: dict[str, argparse.ArgumentParser] = {}
    for cmd in SUBCOMMANDS:
        p = sub.add_parser(
            cmd.name,
            help=cmd.help,
            description=cmd.help,
            formatter_class=_HelpFormatter,
            allow_abbrev=False,
            epilog=(
                f"Every flag can also be set as an environment variable {ENV_PREFIX}<FLAG> (e.g. "
                f"{ENV_PREFIX}MAX_MODEL_LEN=32k) or as a key of the --config YAML file. Precedence: command line > "
                "environment > config file > default. Dashes and underscores in flag names are interchangeable."
            )
            if cmd.name == "serve"
            else None,
        )
        cmd.add_arguments(p)
        p.set_defaults(_run=cmd.run, _parser=p)
        parsers[cmd.name] = p
    return parser, parsers


def normalize_flag_names(argv: Sequence[str]) -> list[str]:
    """``--max_model_len=32k`` → ``--max-model-len=32k``; values and everything after ``--`` are left alone."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return out + list(argv[i:])
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            arg = "--" + name[2:].replace("_", "-") + eq + value
        out.append(arg)
    return out


def parse_args(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> argparse.Namespace:
    """Parse ``inferd`` arguments with environment and config-file defaults; exits with status 2 on bad input."""
    environ = os.environ if environ is None else environ
    parser, subparsers = build_parser()
    argv = normalize_flag_names(argv)
    if argv and argv[0] in subparsers:
        sub, rest = subparsers[argv[0]], argv[1:]
        nested = _nested_parser(sub, rest[0]) if rest else None
        if nested is not None:  # `inferd bench throughput ...`: the flags live on the nested parser
            sub, rest = nested, rest[1:]
        sub.set_defaults(**_layered_defaults(sub, rest, environ))
    return parser.parse_args(argv)


def _nested_parser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(name)
    return None


def _layered_defaults(
    parser: argparse.ArgumentParser, argv: Sequence[str], environ: Mapping[str, str]
) -> dict:
    actions = {a.dest: a for a in parser._actions if a.option_strings and a.dest != "help"}
    defaults: dict[str, Any] = {}
    config_path = _find_config(argv) or environ.get(ENV_PREFIX + "CONFIG")
    if config_path:
        for key, value in _load_yaml(parser, config_path).items():
            dest = str(key).replace("-", "_")
            if dest not in actions or dest == "config":
                parser.error(
                    f"unknown key {key!r} in config file {config_path}; keys are flag names "
                    "such as max-model-len."
                )
            defaults[dest] = _coerce(parser, actions[dest], value, f"config file {config_path}")
    for dest, action in actions.items():
        name = ENV_PREFIX + dest.upper()
        raw = environ.get(name)
        if raw is None and dest == "api_key":
            raw, name = environ.get("VLLM_API_KEY"), "VLLM_API_KEY"
        if raw is not None and dest != "config":
            defaults[dest] = _coerce(parser, action, raw, f"environment variable {name}")
    if "api_key" in defaults:
        defaults["api_key"] = _one_or_list(defaults["api_key"])
    return defaults


def _find_config(argv: Sequence[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def _load_yaml(parser: argparse.ArgumentParser, path: str) -> dict[str, Any]:
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        parser.error(f"cannot read config file {path}: {e.strerror}")
    except yaml.YAMLError as e:
        parser.error(f"config file {path} is not valid YAML: {e}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        parser.error(f"config file {path} must hold a mapping of flag names to values")
    return data


def _coerce(parser: argparse.ArgumentParser, action: argparse.Action, value: Any, source: str) -> Any:
    """A config-file or environment value converted as the flag's own parser would; exit 2 if it does not fit."""
    flag = action.option_strings[0]
    try:
        if action.nargs == 0:  # boolean flags
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE or text in _FALSE:
                return text in _TRUE
            raise ValueError("expected true or false")
        if action.nargs in ("+", "*"):
            items = value if isinstance(value, list) else _split_list(str(value))
            return [_convert(action, v) for v in items]
        return _convert(action, value)
    except (ValueError, TypeError, argparse.ArgumentTypeError) as e:
        parser.error(f"{source}: invalid value {value!r} for {flag}: {e}")


def _split_list(text: str) -> list[str]:
    text = text.strip()
    if text.startswith("["):
        return [str(v) for v in json.loads(text)]
    return [p for p in text.replace(",", " ").split() if p]


def _convert(action: argparse.Action, value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a value, not true/false")
    if isinstance(value, (int, float)):
        value = str(value)  # parsed as typed on the command line: 3.5 is no int, 0.9 is a float
    if action.type is None:
        if isinstance(value, (dict, list)):
            raise ValueError("expected a single value")
        result = str(value)
    else:
        result = action.type(value)  # type: ignore[operator]
    if action.choices is not None and result not in action.choices:
        raise ValueError(f"choose from {', '.join(map(str, action.choices))}")
    return result


def _configure_logging(level_name: str) -> None:
    level = logging.DEBUG if level_name == "trace" else getattr(logging, level_name.upper(), logging.INFO)
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    )
    root = logging.getLogger("inferd")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``inferd`` and ``python -m inferd``; returns the process exit status."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return int(args._run(args))
