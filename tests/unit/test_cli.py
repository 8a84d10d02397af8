"""`inferd serve` argument parsing: vLLM command lines, env vars, YAML config, precedence, clear exit-2 errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from inferd.cli import engine_args_from_namespace, parse_args
from inferd.config import DEFAULT_MODEL


def serve(*argv: str, env: dict[str, str] | None = None):
    return parse_args(["serve", *argv], env or {})


def engine_args(*argv: str, env: dict[str, str] | None = None):
    ns = serve(*argv, env=env)
    return engine_args_from_namespace(ns, ns._parser)


def exit_message(capsys: pytest.CaptureFixture[str], *argv: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(SystemExit) as exc:
        engine_args(*argv, env=env)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_defaults_match_vllm() -> None:
    ns = serve()
    ea = engine_args_from_namespace(ns, ns._parser)
    assert ea.model == DEFAULT_MODEL
    assert (ns.host, ns.port, ns.api_key, ns.shutdown_timeout) == (None, 8000, None, 30.0)
    assert (ea.max_logprobs, ea.block_size, ea.max_num_seqs, ea.gpu_memory_utilization) == (20, 16, 256, 0.9)
    assert ea.enable_prefix_caching and ea.tensor_parallel_size == 1 and ea.generation_config == "auto"
    assert ns.allowed_origins is None and ns.uvicorn_log_level == "info" and not ns.enable_log_requests


def test_a_vllm_command_line_works_unchanged() -> None:
    ea = engine_args(
        "Qwen/Qwen3-8B", "--host", "0.0.0.0", "--port", "8001", "--dtype", "bfloat16", "--max-model-len", "32k",
        "--gpu-memory-utilization", "0.85", "--max-num-seqs", "128", "--max-num-batched-tokens", "16384",
        "--block-size", "32", "--no-enable-prefix-caching", "--enforce-eager", "--download-dir", "/models",
        "--load-format", "safetensors", "--seed", "1", "--served-model-name", "qwen", "qwen3-8b",
        "--generation-config", "vllm", "--max-logprobs", "10", "--disable-log-requests", "-tp", "1",
        "--trust-remote-code", "--revision", "main", "--tokenizer", "Qwen/Qwen3-8B",
    )  # fmt: skip
    assert ea.model == "Qwen/Qwen3-8B" and ea.dtype == "bfloat16" and ea.max_model_len == 32768
    assert ea.gpu_memory_utilization == 0.85 and ea.max_num_seqs == 128 and ea.max_num_batched_tokens == 16384
    assert ea.block_size == 32 and not ea.enable_prefix_caching and ea.enforce_eager
    assert ea.download_dir == "/models" and ea.load_format == "safetensors" and ea.seed == 1
    assert ea.served_model_name == ["qwen", "qwen3-8b"] and ea.generation_config == "vllm"
    assert ea.max_logprobs == 10 and ea.trust_remote_code and ea.revision == "main"


def test_disable_custom_all_reduce_flag() -> None:
    assert engine_args().disable_custom_all_reduce is False
    assert engine_args("-tp", "2", "--disable-custom-all-reduce").disable_custom_all_reduce is True
    assert engine_args(env={"INFERD_DISABLE_CUSTOM_ALL_REDUCE": "1"}).disable_custom_all_reduce is True


def test_model_flag_and_underscores() -> None:
    ea = engine_args("--model", "org/m", "--max_model_len=4k", "--served_model_name", "a")
    assert ea.model == "org/m" and ea.max_model_len == 4096 and ea.served_model_name == ["a"]
    assert serve("--uvicorn_log_level", "debug", "--enable_log_requests").enable_log_requests


def test_environment_variables() -> None:
    env = {
        "INFERD_MODEL": "env/model", "INFERD_MAX_MODEL_LEN": "8k", "INFERD_PORT": "9000",
        "INFERD_ENABLE_PREFIX_CACHING": "false", "INFERD_SERVED_MODEL_NAME": "a,b",
        "INFERD_ALLOWED_ORIGINS": '["https://x.example"]', "INFERD_API_KEY": "k1",
        "INFERD_ENFORCE_EAGER": "1", "INFERD_SHUTDOWN_TIMEOUT": "5",
    }  # fmt: skip
    ns = serve(env=env)
    ea = engine_args_from_namespace(ns, ns._parser)
    assert ea.model == "env/model" and ea.max_model_len == 8192 and not ea.enable_prefix_caching
    assert ea.served_model_name == ["a", "b"] and ea.enforce_eager
    assert (ns.port, ns.api_key, ns.allowed_origins, ns.shutdown_timeout) == (
        9000,
        "k1",
        ["https://x.example"],
        5.0,
    )
    # The command line wins over the environment, a positional MODEL over INFERD_MODEL.
    ns = serve("cli/model", "--port", "9100", "--enable-prefix-caching", env=env)
    ea = engine_args_from_namespace(ns, ns._parser)
    assert ea.model == "cli/model" and ns.port == 9100 and ea.enable_prefix_caching


def test_api_key_env_names() -> None:
    assert serve(env={"VLLM_API_KEY": "v"}).api_key == "v"
    assert serve(env={"VLLM_API_KEY": "v", "INFERD_API_KEY": "i"}).api_key == "i"
    assert serve("--api-key", "c", env={"INFERD_API_KEY": "i"}).api_key == "c"


def test_config_file_and_precedence(tmp_path: Path) -> None:
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(
        "model: yaml/model\nmax-model-len: 16k\nmax_num_seqs: 8\nserved-model-name: [x, y]\n"
        "enable-prefix-caching: false\nport: 7000\nallowed-origins: [https://a.example, https://b.example]\n"
    )
    ns = serve("--config", str(cfg))
    ea = engine_args_from_namespace(ns, ns._parser)
    assert ea.model == "yaml/model" and ea.max_model_len == 16384 and ea.max_num_seqs == 8
    assert ea.served_model_name == ["x", "y"] and not ea.enable_prefix_caching
    assert ns.port == 7000 and ns.allowed_origins == ["https://a.example", "https://b.example"]
    # command line > environment > config file
    ns = serve(
        "--config", str(cfg), "--max-num-seqs", "4", env={"INFERD_PORT": "7100", "INFERD_MAX_NUM_SEQS": "6"}
    )
    assert ns.max_num_seqs == 4 and ns.port == 7100 and ns.max_model_len == 16384
    assert serve(env={"INFERD_CONFIG": str(cfg)}).port == 7000


def test_allowed_origins_forms() -> None:
    assert serve("--allowed-origins", "https://a.example, https://b.example").allowed_origins == [
        "https://a.example",
        "https://b.example",
    ]
    assert serve("--allowed-origins", '["*"]').allowed_origins == ["*"]


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        (("--port", "eighty"), None, "--port"),
        (("--max-model-len", "lots"), None, "--max-model-len"),
        (("--dtype", "float8"), None, "dtype"),
        (("--load-format", "pickle"), None, "--load-format"),
        (("-tp", "0"), None, "tensor_parallel_size"),
        (("-dp", "0"), None, "data_parallel_size"),
        (("--block-size", "3"), None, "block_size"),
        (("--gpu-memory-utilization", "1.5"), None, "gpu_memory_utilization"),
        (("--unknown-flag",), None, "unrecognized"),
        ((), {"INFERD_PORT": "x"}, "INFERD_PORT"),
        ((), {"INFERD_ENFORCE_EAGER": "maybe"}, "INFERD_ENFORCE_EAGER"),
        ((), {"INFERD_DEVICE": "tpu"}, "INFERD_DEVICE"),
    ],
)
def test_bad_values_exit_2_with_a_clear_message(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], env: dict[str, str] | None, needle: str
) -> None:
    assert needle in exit_message(capsys, *argv, env=env)


def test_bad_config_files(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("max-model-len: 4k\nno-such-flag: 1\n")
    assert "no-such-flag" in exit_message(capsys, "--config", str(cfg))
    assert "cannot read config file" in exit_message(capsys, "--config", str(tmp_path / "missing.yaml"))
    cfg.write_text("port: [1, 2]\n")
    assert "--port" in exit_message(capsys, "--config", str(cfg))


def test_server_args_errors_exit_2(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    for extra in (["--chat-template", str(tmp_path / "missing.jinja")], ["--port", "70000"],
                  ["--chat-template", "{% for %}"]):  # fmt: skip
        proc = subprocess.run(
            [sys.executable, "-m", "inferd", "serve", "some/model", *extra],
            env=env,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and "error:" in proc.stderr


def test_python_m_inferd_help_is_grouped() -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "inferd", "serve", "--help"], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0
    for heading in ("model:", "cache and memory:", "scheduler:", "HTTP server:", "INFERD_"):
        assert heading in proc.stdout
    top = subprocess.run([sys.executable, "-m", "inferd", "--help"], env=env, capture_output=True, text=True)
    assert top.returncode == 0 and "serve" in top.stdout


def test_bench_engine_flags_take_env_and_config_file(tmp_path) -> None:
    from inferd.cli import parse_args

    cfg = tmp_path / "bench.yaml"
    cfg.write_text("max-model-len: 77\n")
    args = parse_args(
        ["bench", "latency", "some/model", "--config", str(cfg)], environ={"INFERD_MAX_NUM_SEQS": "7"}
    )
    assert (args.max_model_len, args.max_num_seqs, args.bench_command) == (77, 7, "latency")
    assert parse_args(["bench", "serve", "--base-url", "http://h:1"], environ={}).base_url == "http://h:1"
