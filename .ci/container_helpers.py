"""Host-side helpers of .ci/container-test.sh, run with the project's venv.

``models DIR``             the tiny random Qwen3 of tests/conftest.py at DIR/tiny, and the same files as a Hugging
                           Face cache at DIR/hf holding the hub repo ``inferd-ci/tiny`` (for HF_HOME mounts)
``free-port``              print a free TCP port on 127.0.0.1
``wait SECONDS NAME=URL…`` wait until every URL's /health answers 200; fail early, with the container's log,
                           when container NAME stops
``chat BASE_URL MODEL``    one chat completion through the ``openai`` client; exit 1 unless it returns tokens
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HUB_REPO = "inferd-ci/tiny"
HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def make_models(out: Path) -> None:
    """DIR/tiny (a model folder) and DIR/hf (an HF_HOME whose hub cache holds it as ``inferd-ci/tiny``)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import build_model

    tiny = build_model(out / "tiny")
    repo = out / "hf" / "hub" / ("models--" + HUB_REPO.replace("/", "--"))
    snapshot = repo / "snapshots" / HUB_COMMIT
    shutil.copytree(tiny, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(HUB_COMMIT)
    for path in [out, *out.rglob("*")]:  # readable by any container user
        path.chmod(0o755 if path.is_dir() else 0o644)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _running(name: str) -> bool:
    out = subprocess.run(
        ["podman", "container", "inspect", "--format", "{{.State.Running}}", name],
        capture_output=True,
        text=True,
    )
    return out.stdout.strip() == "true"


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def wait(timeout: float, targets: list[str]) -> int:
    pending = dict(t.split("=", 1) for t in targets)
    start = time.monotonic()
    while pending:
        for name, url in list(pending.items()):
            if _healthy(url):
                print(f"{name}: healthy after {time.monotonic() - start:.0f} s")
                del pending[name]
            elif not _running(name):
                print(f"{name}: the container stopped before it was healthy; its log:", file=sys.stderr)
                subprocess.run(["podman", "logs", "--tail", "60", name])
                return 1
        if pending and time.monotonic() - start > timeout:
            for name in pending:
                print(f"{name}: not healthy after {timeout:.0f} s; its log:", file=sys.stderr)
                subprocess.run(["podman", "logs", "--tail", "60", name])
            return 1
        time.sleep(0.5)
    return 0


def chat(base_url: str, model: str) -> int:
    from openai import OpenAI

    client = OpenAI(base_url=base_url.rstrip("/") + "/v1", api_key="unused", timeout=120)
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=8,
        temperature=0,
    )
    choice = reply.choices[0]
    usage = reply.usage
    if usage is None or usage.completion_tokens < 1 or choice.finish_reason not in ("stop", "length"):
        print(f"unexpected reply from {base_url}: {reply}", file=sys.stderr)
        return 1
    print(
        f"{base_url}: model={reply.model} finish_reason={choice.finish_reason} "
        f"completion_tokens={usage.completion_tokens} text={choice.message.content!r}"
    )
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["models"] and len(argv) == 2:
        make_models(Path(argv[1]))
        return 0
    if argv == ["free-port"]:
        print(free_port())
        return 0
    if argv[:1] == ["wait"] and len(argv) >= 3:
        return wait(float(argv[1]), argv[2:])
    if argv[:1] == ["chat"] and len(argv) == 3:
        return chat(argv[1], argv[2])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main(sys.argv[1:]))
