"""Output folders, atomic writes and run metadata shared by every script.

Every file is written to a temporary name in the same folder and then renamed, so an interrupted
run never leaves a half-written figure or table behind. The output folder is checked for
writability before any computation starts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pandas as pd

from common.hub_models import GPT2_SMALL, official_name, short_name
from common.planted_names import check_model_name, is_planted, planted_twin

UMASK = os.umask(0)  # the process's umask (read by setting it): the mode new files and folders get
os.umask(UMASK)
REPO_ROOT = Path(__file__).resolve().parent.parent


def figures_root() -> Path:
    """Where outputs go by default: $L1H5_FIGURES; else ``figures/`` beside the scripts in a
    checkout (also after ``pip install -e .``); else, installed with ``pip install .`` (the
    scripts live in site-packages), ``figures/`` under the current folder."""
    if os.environ.get("L1H5_FIGURES"):
        return Path(os.environ["L1H5_FIGURES"]).expanduser().resolve()
    if (REPO_ROOT / "pyproject.toml").exists():
        return REPO_ROOT / "figures"
    return Path.cwd().resolve() / "figures"


FIGURES = figures_root()


def cache_dir() -> Path:
    """Where expensive intermediates live (planted model, effective embeddings): $L1H5_CACHE."""
    return Path(os.environ.get("L1H5_CACHE", Path.home() / ".cache" / "l1h5"))


def model_fingerprint(model) -> str:
    """sha256 (16 hex) of every parameter's bytes and the config fields that change outputs.

    Cached on the model object: hashing gpt2-small's 500 MB takes about a second.
    """
    import torch

    cached = getattr(model, "_l1h5_fingerprint", None)
    if cached:
        return cached
    h = hashlib.sha256()
    cfg = model.cfg
    h.update(repr((cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.d_head, cfg.d_vocab, cfg.n_ctx,
                   cfg.act_fn, cfg.normalization_type)).encode())
    for name, p in sorted(model.state_dict().items()):
        if not torch.is_floating_point(p):
            continue
        h.update(name.encode())
        h.update(p.detach().float().contiguous().cpu().numpy().tobytes())
    fp = h.hexdigest()[:16]
    try:
        model._l1h5_fingerprint = fp
    except AttributeError:
        pass
    return fp


def default_out_dir(script: str, model: str = "gpt2-small") -> Path:
    """figures/<script>/ for real gpt2-small, figures/demo/<script>/ for the planted model,
    figures/demo-<twin>/<script>/ for a planted twin (``planted:<twin>``),
    figures/models/<name>/<script>/ for another GPT-2-family hub model (gpt2-medium,
    alias-gpt2-small-x21: :mod:`common.hub_models`, aliases folded onto their model),
    figures/local/<folder name>/<script>/ for a local model folder."""
    official = official_name(model)
    if official == GPT2_SMALL:
        return FIGURES / script
    if is_planted(model):
        twin = planted_twin(model)
        return FIGURES / ("demo" if twin is None else f"demo-{twin}") / script
    if official:
        return FIGURES / "models" / short_name(official) / script
    return FIGURES / "local" / Path(model).name / script


def prepare_out_dir(out: str | Path | None, script: str, model: str = "gpt2-small", create: bool = False) -> Path:
    """``out`` (default :func:`default_out_dir`), proven writable (a folder that does not exist
    yet: its nearest existing parent), or SystemExit (also, before anything is checked, for an
    unknown planted twin). Nothing is created unless ``create``: :func:`common.cli.start` makes the
    folder (:func:`claim_out_dir`) only once the start-up has succeeded, so a run stopped by a bad
    input leaves no empty folder behind."""
    check_model_name(model)
    path = Path(out) if out else default_out_dir(script, model)
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    try:
        if not probe.is_dir():
            raise NotADirectoryError(f"{probe} is not a folder")
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".write-test-"):
            pass
        if create:
            path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SystemExit(f"error: output directory {path} is not writable ({exc.strerror or exc})") from None
    return path


def manifest_path(folder: str | Path) -> Path:
    """The list of files written into ``folder`` since its current run identity began: kept in the
    cache (:func:`cache_dir`), never in the output folder itself, which holds only results."""
    key = hashlib.sha256(str(Path(folder).resolve()).encode()).hexdigest()[:20]
    return cache_dir() / "outputs" / f"{key}.txt"


def run_identity(args) -> dict:
    """What makes a run's outputs belong to one study: the model and the studied head."""
    return {k: getattr(args, k, None) for k in ("model", "layer", "head")}


def claim_out_dir(path: str | Path, args, script: str | None = None) -> Path:
    """Create the output folder for a run whose start-up succeeded, and clear a previous run's
    outputs for another model or head from it: the files that run wrote (its manifest,
    :func:`manifest_path`, kept by :func:`atomic_path`) are removed, and the removal is said in one line,
    so ``attention_L1H5.html`` never stays silently beside a rerun's ``attention_L1H4.html``. A
    folder whose earlier run predates the manifest has its files named as stale instead (nothing
    unknown is ever deleted). The same model and head: outputs are overwritten as usual."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    meta_path = path / "meta.json"
    if not meta_path.exists():
        return path
    try:
        before = run_identity(argparse.Namespace(**json.loads(meta_path.read_text()).get("args", {})))
    except (ValueError, TypeError, AttributeError):
        before = {}
    now = run_identity(args)
    if before == now:
        return path
    what = ", ".join(f"{k} {v}" for k, v in before.items() if v is not None) or "unknown"
    manifest = manifest_path(path)
    if manifest.exists():
        names = sorted({n for n in manifest.read_text().splitlines()[1:] if n and "/" not in n})
        removed = [n for n in names if (path / n).is_file()]
        for n in removed:
            (path / n).unlink()
        manifest.unlink()
        if removed:
            print(f"note: {path} held the outputs of an earlier run ({what}); removed its {len(removed)} files "
                  f"({', '.join(removed[:6])}{', ...' if len(removed) > 6 else ''})", file=sys.stderr)
    else:
        stale = sorted(f.name for f in path.iterdir() if f.is_file() and not f.name.startswith("."))
        print(f"warning: {path} holds files of an earlier run ({what}) that may be stale beside this one's: "
              f"{', '.join(stale[:8])}{', ...' if len(stale) > 8 else ''} (remove them, or use another --out)",
              file=sys.stderr)
    return path


def _record_output(path: Path) -> None:
    """Add ``path``'s name to its folder's manifest (once)."""
    manifest = manifest_path(path.parent)
    try:
        names = manifest.read_text().splitlines() if manifest.exists() else []
        if path.name not in names[1:]:
            manifest.parent.mkdir(parents=True, exist_ok=True)
            with open(manifest, "a") as f:
                f.write(("" if names else f"{path.parent.resolve()}\n") + path.name + "\n")
    except OSError:
        pass  # the manifest only serves the stale-output clean-up; never fail a write for it


@contextmanager
def atomic_path(path: str | Path, record: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.
    ``record``: name it in its folder's manifest of outputs (:func:`claim_out_dir`); caches pass False."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=path.suffix)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes 0600 files; results should be readable like any other
    try:
        yield Path(tmp)
        os.replace(tmp, path)
        if record:
            _record_output(path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, default=_jsonable) + "\n")


def write_csv(path: str | Path, df: pd.DataFrame) -> Path:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return Path(path)


def _jsonable(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def git_version() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"],
            capture_output=True, text=True, timeout=5,
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:  # installed with `pip install .`: no git checkout, the package's version instead
        from importlib.metadata import PackageNotFoundError, version

        return f"l1h5 {version('l1h5')} (installed)"
    except PackageNotFoundError:
        return "unknown"


# Every installed library that can change a number in an output (the model's weights and their
# processing, the SAE, tokenisation and token counts, the clustering and its scores, the tables),
# by its distribution name; meta.json records each one's installed version.
NUMBER_LIBRARIES = ("torch", "numpy", "transformer-lens", "transformers", "sae-lens", "safetensors", "tokenizers",
                    "huggingface-hub", "tiktoken", "datasets", "pandas", "scikit-learn", "scipy", "leidenalg",
                    "igraph")


def library_versions(names=NUMBER_LIBRARIES) -> dict[str, str]:
    """The installed version of each distribution in ``names`` (importlib.metadata, so packages
    without ``__version__``, such as transformer_lens, are named too); "not installed" otherwise.
    Keys use the import names (transformer_lens, sae_lens, scikit_learn, huggingface_hub)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in names:
        try:
            out[name.replace("-", "_")] = version(name)
        except PackageNotFoundError:
            out[name.replace("-", "_")] = "not installed"
    return out


def write_meta(out_dir: Path, args, extra: dict | None = None, script: str | None = None) -> Path:
    """meta.json: the model, seed and every argument of the run, the code version and timing, and
    the installed version of every library that shapes a number (:func:`library_versions`).

    ``script`` names the script when it runs in-process (tests, run_all --render-only); by default
    the command line's."""
    versions = library_versions()
    meta = {
        "script": f"{script}.py" if script else Path(sys.argv[0]).name,
        "argv": sys.argv[1:] if not script or Path(sys.argv[0]).stem == script else None,
        "args": vars(args) if hasattr(args, "__dict__") else dict(args),
        "version": git_version(),
        "torch": versions["torch"],  # the two report.html's footer shows, also in "libraries"
        "transformer_lens": versions["transformer_lens"],
        "libraries": versions,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if extra:
        meta.update(extra)
    return write_json(out_dir / "meta.json", meta)
