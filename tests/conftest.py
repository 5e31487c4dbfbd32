"""Shared fixtures: the planted model, built once per session into a temporary cache."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session", autouse=True)
def planted_cache(tmp_path_factory):
    """Scripts run as subprocesses inherit L1H5_CACHE, so the planted folder is built once."""
    if "L1H5_CACHE" not in os.environ:
        os.environ["L1H5_CACHE"] = str(tmp_path_factory.mktemp("l1h5-cache"))
    return Path(os.environ["L1H5_CACHE"])


@pytest.fixture(scope="session")
def planted_model(planted_cache):
    import torch

    from common.model import load_model

    torch.set_grad_enabled(False)
    return load_model("planted")


@pytest.fixture(scope="session")
def truth(planted_cache):
    from common.planted import ground_truth

    return ground_truth()


@pytest.fixture(scope="session")
def tokenizer():
    from common.gpt2_tokenizer import load_tokenizer

    return load_tokenizer()


def run_main(script: str, *args: str) -> int:
    """Run a top-level script's ``main(argv)`` in this process (the way tests run scripts).

    Scripts are imported as plain modules (the repo root is on sys.path); the model is loaded once
    per process by ``common.model.load_model``, so the planted model is shared by every test.
    Returns main's exit code (0 is asserted).
    """
    import importlib

    code = importlib.import_module(Path(script).stem).main([str(a) for a in args])
    assert code in (0, None), f"{script} {' '.join(map(str, args))} returned {code}"
    return code or 0


def run_script(script: str, *args: str, check: bool = True, timeout: int = 600):
    """Run a top-level script as a user would, in a subprocess; only where the process boundary is
    the point (exit codes and messages without a traceback, ``make demo``). Returns the CompletedProcess."""
    import subprocess

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def check_help_and_common_errors(main, tmp_path, capsys) -> str:
    """In-process: --help exits 0, an unknown head and an unwritable output folder stop the script
    with a clear SystemExit. Returns the --help text."""
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    help_text = capsys.readouterr().out
    assert e.value.code == 0 and "usage" in help_text.lower()
    with pytest.raises(SystemExit) as e:
        main(["--model", "planted", "--head", "99", "--out", str(tmp_path)])
    assert "--head 99 out of range" in str(e.value.code)
    with pytest.raises(SystemExit) as e:
        main(["--model", "planted", "--out", "/proc/x"])
    assert "not writable" in str(e.value.code)
    return help_text
