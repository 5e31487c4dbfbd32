"""Test-only: the gpt2-small-shaped model of bench/build_model.py (real attention/LN/wpe tensors from
../shared, seeded random wte and MLP weights), built once per test process in pytest's temporary
folder and shared by every test that needs it (about 0.5 GB on disk, ~2 s to build)."""

import sys
from pathlib import Path

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import build_model  # noqa: E402

_FOLDER: dict[str, Path] = {}


def real_tensor_folder(tmp_path_factory) -> Path:
    """The HF GPT-2 folder built by ``bench/build_model.py`` (seed 0), once per process."""
    if "folder" not in _FOLDER:
        out = tmp_path_factory.getbasetemp() / "bench-real-tensors-seed0"
        _FOLDER["folder"] = build_model.build_folder(out, seed=0)
    return _FOLDER["folder"]
