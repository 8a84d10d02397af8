"""The ``inferd`` command: ``inferd serve [MODEL] [flags]`` with vLLM's flag names and defaults.

Every flag can also come from the environment (``INFERD_<FLAG_WITH_UNDERSCORES>``, e.g. ``INFERD_MAX_MODEL_LEN=32k``)
or from ``--config file.yaml`` (keys are flag names). Precedence: command line > environment > config file > default.
Dashes and underscores in flag names are interchangeable (``--max_model_len`` is ``--max-model-len``).
Subcommands register in ``SUBCOMMANDS``; each brings its arguments and its ``run`` function. The flags themselves
are defined in ``cli_flags.py``.
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
from inferd.cli_flags import _one_or_list, add_serve_arguments
from inferd.config import EngineArgs

ENV_PREFIX = "INFERD_"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults only where they say something (and never the API key)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        default = action.default
        if default is None or default is False or default is argparse.SUPPRESS or action.dest == "api_key":
            return help_text
        return super()._get_help_string(action) or help_text


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
