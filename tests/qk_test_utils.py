"""Helpers shared by the QK-circuit script tests (test_qk*, test_skew*, test_svd*)."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_script(script: str):
    """Import a top-level script as a module, to call its main(argv) in-process."""
    name = "l1h5_script_" + Path(script).stem
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / script)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod
