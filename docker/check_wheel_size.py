"""``python check_wheel_size.py DIR LIMIT_MB``: exit 1 if any wheel in DIR is larger than LIMIT_MB megabytes.

On failure it prints the largest files inside the offending wheel, so the cause (a stray data file, a checkpoint)
is visible in the build log. Run by docker/build-wheel.sh when the Dockerfile's RUN_WHEEL_CHECK is true.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

MB = 1024 * 1024


def check(folder: Path, limit_mb: float) -> int:
    """0 if every ``*.whl`` in ``folder`` is at most ``limit_mb`` MiB, else 1 (with a report on stderr)."""
    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        print(f"check_wheel_size: no wheel in {folder}", file=sys.stderr)
        return 1
    status = 0
    for wheel in wheels:
        size = wheel.stat().st_size
        if size <= limit_mb * MB:
            print(f"check_wheel_size: {wheel.name} is {size / MB:.2f} MiB (limit {limit_mb:g} MiB)")
            continue
        status = 1
        print(
            f"check_wheel_size: {wheel.name} is {size / MB:.2f} MiB, over the {limit_mb:g} MiB limit "
            "(raise WHEEL_SIZE_LIMIT_MB or build with RUN_WHEEL_CHECK=false). Largest files:",
            file=sys.stderr,
        )
        with zipfile.ZipFile(wheel) as zf:
            infos = sorted(zf.infolist(), key=lambda i: i.compress_size, reverse=True)[:10]
        for info in infos:
            print(f"  {info.compress_size / MB:8.2f} MiB  {info.filename}", file=sys.stderr)
    return status


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: check_wheel_size.py DIR LIMIT_MB", file=sys.stderr)
        return 2
    try:
        limit = float(argv[1])
    except ValueError:
        print(f"check_wheel_size: LIMIT_MB must be a number, got {argv[1]!r}", file=sys.stderr)
        return 2
    return check(Path(argv[0]), limit)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
