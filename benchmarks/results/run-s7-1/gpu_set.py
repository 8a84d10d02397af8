"""Session 7: run `inferd ...` with module attributes overridden, for in-call A/Bs.
Usage: python gpu_set.py module.ATTR=value [...] -- <inferd arguments>  (values: ints, or True/False)."""
import importlib
import sys

split = sys.argv.index("--")
for item in sys.argv[1:split]:
    name, value = item.split("=")
    module, attr = name.rsplit(".", 1)
    parsed = {"True": True, "False": False}.get(value)
    setattr(importlib.import_module(module), attr, int(value) if parsed is None else parsed)
    print(f"set {name} = {getattr(importlib.import_module(module), attr)}", flush=True)
from inferd.cli import main  # noqa: E402

sys.exit(main(sys.argv[split + 1:]))
