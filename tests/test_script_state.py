"""A script's ``main`` leaves the caller's global state as it found it (a notebook, a test).

``common.cli.start`` disables grad, sets ``--threads`` and seeds python ``random``, numpy's global
stream and torch; every script's ``main`` runs inside ``common.cli.script_state``, which gives all
of that back on exit, on an error and on SystemExit. Ground truth: the caller's own streams,
seeded here, drawn once without any run in between; a run must not change what they draw next.
The unwrapped ``main`` is run once to show that the run really does change each of them (so the
restored checks can fail).
"""

from __future__ import annotations

import importlib
import random
import re
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from common import cli

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p.stem for p in ROOT.glob("*.py") if p.stem != "run_all")


def draws() -> tuple:
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def seed_caller(seed: int = 1234) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def caller_state(threads: int):
    """The caller's state for one check: grad on, ``threads`` torch threads; put back afterwards."""
    grad, saved = torch.is_grad_enabled(), torch.get_num_threads()
    torch.set_grad_enabled(True)
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_grad_enabled(grad)
        torch.set_num_threads(saved)


def other_threads() -> tuple[int, int]:
    """(the caller's thread count, the --threads a run asks for): always different."""
    return 2, 1


def test_every_script_main_runs_inside_script_state():
    for name in SCRIPTS:
        main = importlib.import_module(name).main
        assert getattr(main, "keeps_state", False), f"{name}.main is not wrapped in common.cli.keeps_state"
        assert re.search(r"^@keeps_state\ndef main\(", (ROOT / f"{name}.py").read_text(), re.M)


def test_script_state_restores_on_error():
    caller, run = other_threads()
    with caller_state(caller):
        seed_caller()
        expected = draws()
        seed_caller()
        with pytest.raises(ZeroDivisionError):
            with cli.script_state():
                torch.set_grad_enabled(False)
                torch.set_num_threads(run)
                cli.seed_everything(0)
                draws()
                1 / 0
        assert torch.is_grad_enabled() and torch.get_num_threads() == caller
        assert draws() == expected


def run(module, argv, wrapped=True):
    main = module.main if wrapped else module.main.__wrapped__
    return main([str(a) for a in argv])


def test_characterize_head_twice_and_a_failing_run_restore_everything(tmp_path, planted_model):
    mod = importlib.import_module("characterize_head")
    caller, threads = other_threads()
    argv = ["--model", "planted", "--n-prompts", "4", "--seq-len", "12", "--threads", threads, "--seed", 3]
    with caller_state(caller):
        seed_caller()
        expected = [draws() for _ in range(3)]

        # the run itself changes all three (unwrapped): the restored checks below can fail
        seed_caller()
        run(mod, [*argv, "--out", tmp_path / "raw"], wrapped=False)
        assert not torch.is_grad_enabled() and torch.get_num_threads() == threads
        assert draws() != expected[0]
        torch.set_grad_enabled(True)
        torch.set_num_threads(caller)

        seed_caller()
        assert run(mod, [*argv, "--out", tmp_path / "a"]) == 0
        assert torch.is_grad_enabled() and torch.get_num_threads() == caller
        assert draws() == expected[0]
        assert run(mod, [*argv, "--out", tmp_path / "b"]) == 0  # twice in one process: same results
        assert torch.is_grad_enabled() and torch.get_num_threads() == caller
        assert draws() == expected[1]
        a, b = ((tmp_path / d / "head_scores.csv").read_text() for d in "ab")
        assert a == b
        with pytest.raises(SystemExit, match="--head 99 out of range"):  # fails after start set everything
            run(mod, [*argv, "--head", 99, "--out", tmp_path / "c"])
        assert torch.is_grad_enabled() and torch.get_num_threads() == caller
        assert draws() == expected[2]


def test_qk_script_and_clustering_layout_restore(tmp_path, planted_model):
    """start_head's route (svd_sym_skew_heatmap) and the one common function that seeds python's
    stream itself (attention_graph.layout, for igraph)."""
    import igraph

    from common.attention_graph import layout

    mod = importlib.import_module("svd_sym_skew_heatmap")
    caller, threads = other_threads()
    with caller_state(caller):
        seed_caller(99)
        expected = [draws() for _ in range(2)]
        seed_caller(99)
        assert run(mod, ["--model", "planted", "--threads", threads, "--out", tmp_path / "s"]) == 0
        assert torch.is_grad_enabled() and torch.get_num_threads() == caller
        assert draws() == expected[0]
        g = igraph.Graph.Ring(30)
        g.es["weight"] = [1.0] * g.ecount()
        xy = layout(g, 50, seed=5)
        assert draws() == expected[1]
        assert np.allclose(xy, layout(g, 50, seed=5))  # still seeded: the same layout twice


def test_run_all_main_leaves_state(tmp_path):
    """run_all runs every step in its own process; in this one (here --render-only and
    --claims-table) it changes none of the three."""
    mod = importlib.import_module("run_all")
    caller, _ = other_threads()
    with caller_state(caller):
        seed_caller(5)
        expected = draws()
        seed_caller(5)
        assert mod.main(["--model", "planted", "--render-only", "--root", str(tmp_path / "root")]) == 0
        assert mod.main(["--claims-table"]) == 0
        assert torch.is_grad_enabled() and torch.get_num_threads() == caller
        assert draws() == expected
