"""``python check_extras.py WHEEL EXTRAS``: exit 1 naming the valid extras if EXTRAS (comma-separated) names an
extra the wheel does not provide. pip only warns about an unknown extra; the image build must fail instead.
"""

from __future__ import annotations

import re
import sys
import zipfile
from email.parser import Parser


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def provided_extras(wheel: str) -> set[str]:
    """The normalized ``Provides-Extra`` names of ``wheel``'s METADATA."""
    with zipfile.ZipFile(wheel) as zf:
        meta_name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(zf.read(meta_name).decode("utf-8"))
    return {_normalize(v) for v in meta.get_all("Provides-Extra") or []}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: check_extras.py WHEEL EXTRAS", file=sys.stderr)
        return 2
    wheel, extras = argv
    wanted = [e.strip() for e in extras.split(",") if e.strip()]
    known = provided_extras(wheel)
    unknown = [e for e in wanted if _normalize(e) not in known]
    if unknown:
        print(
            f"INFERD_EXTRAS names {', '.join(unknown)}, which inferd does not provide; "
            f"choose from: {', '.join(sorted(known)) or '(none)'}.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
