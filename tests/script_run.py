"""One in-process run of a script whose figures are then drawn by ``render`` alone.

``main`` is run with its module's ``render`` replaced by a recorder: the run must ask for exactly
one ``render(out_dir)``; the folder then holds only saved results (no PNG), and the real
``render(out_dir)`` draws every figure from them. The figures are drawn once per test module
(drawing is the slowest part of these runs) and the render test sees them come from saved files.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from conftest import run_main


def run_then_render(script: str, out_dir: Path, *args: str) -> list[Path]:
    """``run_main(script, *args, "--out", out_dir)`` with drawing deferred; returns render's paths."""
    module = importlib.import_module(Path(script).stem)
    asked = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(module, "render", asked.append)
        run_main(script, *args, "--out", str(out_dir))
    assert [Path(p) for p in asked] == [Path(out_dir)], f"{script}: main must call render(out_dir) once"
    assert not list(Path(out_dir).glob("*.png")), f"{script}: figures drawn outside render()"
    return module.render(out_dir)
