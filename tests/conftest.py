"""Shared fixtures: the planted model, built once per test session into a temporary cache that
every pytest-xdist worker of the session (and every script they start) shares."""

import fcntl
import gc
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

# torch intra-op threads in the test processes. One: `make test` runs two pytest workers on two
# cores, so more threads per worker only oversubscribe the cores; and a fixed count keeps every
# float result of a session computed the same way (a script's --threads changes it for the rest
# of the process, so it is put back after every test). Scripts started as subprocesses keep their
# own default.
TEST_THREADS = 1


@contextmanager
def _session_lock(cache: Path, name: str):
    """An exclusive lock on ``cache/.<name>.lock``, shared by the session's worker processes: the
    first one builds, the others wait and then read what it built."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f".{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@pytest.fixture(scope="session", autouse=True)
def _session_torch_threads():
    """TEST_THREADS from the session's start, so module- and session-scoped fixtures (set up before
    any function-scoped one) compute at the same thread count as the tests that compare with them:
    a matmul split over another number of threads rounds differently."""
    import torch

    torch.set_num_threads(TEST_THREADS)


@pytest.fixture(scope="session", autouse=True)
def planted_cache(tmp_path_factory):
    """The session's cache folder (L1H5_CACHE, inherited by scripts run as subprocesses). Under
    pytest-xdist the workers share one folder beside their own temporary folders, so the planted
    folder, its processed weights and its effective embeddings are built once per session, not
    once per worker (every cache writer is atomic and race-safe; the locks below only save the
    duplicate work)."""
    if "L1H5_CACHE" not in os.environ:
        base = tmp_path_factory.getbasetemp()
        cache = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "l1h5-cache"
        os.environ["L1H5_CACHE"] = str(cache)
    return Path(os.environ["L1H5_CACHE"])


def _built_planted_folder(cache: Path) -> Path:
    """The planted folder of ``cache``, built by the first worker that asks (the others wait)."""
    from common.planted import planted_folder

    with _session_lock(cache, "planted"):
        return planted_folder()


@pytest.fixture(autouse=True)
def _fixed_torch_threads():
    """Every test starts and ends at TEST_THREADS torch threads (see above)."""
    import torch

    torch.set_num_threads(TEST_THREADS)
    yield
    torch.set_num_threads(TEST_THREADS)


@pytest.fixture(scope="session")
def planted_model(planted_cache):
    """The planted model (common.model.load_model), with its layer-1 effective embeddings cached:
    the first worker builds the processed-weights entry and the embeddings, the others map them."""
    import torch

    from common.effective_embeddings import effective_embeddings
    from common.model import load_model

    torch.set_grad_enabled(False)
    _built_planted_folder(planted_cache)
    with _session_lock(planted_cache, "planted-model"):
        model = load_model("planted")
        effective_embeddings(model, 1)
    # The libraries and the model are about 0.5 million long-lived Python objects, which every full
    # garbage collection would walk again (about 0.3-1 s each; scripts collect between phases,
    # common.memory.release): frozen, later collections walk only what the tests make.
    gc.collect()
    gc.freeze()
    return model


@pytest.fixture(scope="session")
def truth(planted_cache):
    from common.planted import ground_truth

    _built_planted_folder(planted_cache)
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


def check_bad_input(main, tmp_path, capsys, args, message) -> None:
    """In-process (no interpreter start-up per case): ``main`` on the planted model with ``args``
    stops with a non-zero SystemExit whose message (or stderr) holds ``message``, and writes no CSV
    (into ``tmp_path`` unless ``args`` name their own --out)."""
    out = [] if "--out" in args else ["--out", str(tmp_path)]
    with pytest.raises(SystemExit) as exc:
        main(["--model", "planted", *out, *args, "--threads", "1"])
    assert exc.value.code != 0
    assert message in str(exc.value.code) + capsys.readouterr().err
    assert not list(tmp_path.glob("*.csv"))


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
