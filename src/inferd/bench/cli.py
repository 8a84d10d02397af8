"""`inferd bench throughput | latency | serve | load`."""

from __future__ import annotations

import argparse
import dataclasses
import logging

_BENCHMARKS = {
    "throughput": "Offline generation throughput (default workload: nano-vllm's 256 random requests).",
    "latency": "Milliseconds per output token at batch 1 and batch N (prefill excluded).",
    "serve": "Online benchmark against a running OpenAI-compatible server (ours, vLLM, llama.cpp).",
    "load": "Soak a running server with concurrent clients and disconnects; check nothing is lost or leaked.",
}
_ONLINE = ("serve", "load")  # against a running server: no engine arguments


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    from inferd.bench import latency, load, serve, throughput
    from inferd.cli_flags import add_engine_arguments

    modules = {"throughput": throughput, "latency": latency, "serve": serve, "load": load}
    sub = parser.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)
    for name, text in _BENCHMARKS.items():
        epilog = (
            "Engine flags can also be set as environment variables INFERD_<FLAG> or keys of the --config YAML file "
            "(command line > environment > config file > default)."
            if name != "serve"
            else None
        )
        p = sub.add_parser(
            name, help=text, description=text, epilog=epilog, formatter_class=parser.formatter_class
        )
        if name not in _ONLINE:
            add_engine_arguments(p)
        modules[name].add_arguments(p)
        p.set_defaults(_bench_parser=p)


def run_bench(args: argparse.Namespace) -> int:
    from inferd.bench import latency, serve, throughput
    from inferd.cli import engine_args_from_namespace

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.bench_command == "serve":
        result = serve.run(args)
        return 0 if result["completed"] else 1
    if args.bench_command == "load":
        from inferd.bench import load

        return 0 if load.run(args)["passed"] else 1
    engine_args = engine_args_from_namespace(args, args._bench_parser)
    kwargs = dataclasses.asdict(engine_args)
    module = throughput if args.bench_command == "throughput" else latency
    module.run(args, kwargs)
    return 0
