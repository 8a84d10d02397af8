"""The image's HEALTHCHECK: exit 0 if the running ``inferd serve`` answers 200 on /health, else 1.

The port and host are the server's own: read from its command line (``--port``/``--host``), its environment
(``INFERD_PORT``/``INFERD_HOST``) or its ``--config`` file, in the CLI's precedence; default 8000 on loopback.
Standard library only (plus PyYAML, an inferd dependency, for a config file); no curl in the image.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.request
from pathlib import Path

DEFAULT_PORT = 8000
_ANY = ("", "0.0.0.0", "::")


def find_server() -> tuple[list[str], dict[str, str]] | None:
    """Arguments after ``serve`` and the environment of the first ``inferd serve`` process, or None."""
    for proc in sorted(Path("/proc").glob("[0-9]*"), key=lambda p: int(p.name)):
        try:
            argv = [a.decode() for a in (proc / "cmdline").read_bytes().split(b"\0") if a]
        except OSError:
            continue
        for i in range(len(argv) - 1):
            if argv[i + 1] == "serve" and os.path.basename(argv[i]) == "inferd":
                try:
                    raw = (proc / "environ").read_bytes().split(b"\0")
                except OSError:
                    raw = []
                env = dict(item.decode().partition("=")[::2] for item in raw if b"=" in item)
                return argv[i + 2 :], env
    return None


def server_address(args: list[str], env: dict[str, str]) -> tuple[str, int]:
    """(host to connect to, port) as ``inferd serve`` resolves them: flag > environment > config file > default."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--port", type=int)
    parser.add_argument("--host")
    parser.add_argument("--config")
    known, _ = parser.parse_known_args([a.replace("_", "-") if a.startswith("--") else a for a in args])
    config: dict = {}
    config_path = known.config or env.get("INFERD_CONFIG")
    if config_path:
        import yaml

        with open(config_path, encoding="utf-8") as f:
            config = yaml.safe_load(f) or {}
    port = known.port or env.get("INFERD_PORT") or config.get("port") or DEFAULT_PORT
    host = known.host or env.get("INFERD_HOST") or config.get("host") or ""
    if host in _ANY:
        host = "::1" if host == "::" else "127.0.0.1"
    return host, int(port)


def main() -> int:
    found = find_server()
    args, env = found if found else ([], dict(os.environ))
    try:
        host, port = server_address(args, env)
    except Exception as e:  # an unreadable config file, a bad port: unhealthy, with the reason
        print(f"healthcheck: cannot tell the server's port: {e}", file=sys.stderr)
        return 1
    netloc = f"[{host}]" if ":" in host else host
    try:
        with urllib.request.urlopen(f"http://{netloc}:{port}/health", timeout=5) as resp:
            return 0 if resp.status == 200 else 1
    except OSError as e:
        print(f"healthcheck: http://{netloc}:{port}/health: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
