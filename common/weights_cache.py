"""Processed-weights cache: a TransformerLens-processed model saved once, memory-mapped back.

Why: building a processed HookedTransformer (Hugging Face weights -> TransformerLens layout ->
fold_ln, centring, value-bias folding) holds several copies of the weights at once; at gpt2-small
size a process peaks at about 2.5 GB before any analysis starts. The processed state dict saved
once and read back with ``torch.load(mmap=True)`` + ``load_state_dict(assign=True)`` never copies
the weights (they are pages of the cache file, shared by every process that maps them), so the same
model loads in about a second at about half the peak memory, with bit-identical weights.

Entry: ``cache_dir()/processed/<digest>/`` holding ``weights.pt`` (the processed state dict,
``torch.save``) and ``entry.json`` (the key, the model config, the sha256 and size of weights.pt,
and :func:`common.outputs.model_fingerprint` of the model). ``<digest>`` is the sha256 of the key;
the key is everything the processed weights depend on:

* the route (``local-folder``: :func:`common.model.load_local_folder`; ``hf:<repo>``, e.g.
  ``hf:gpt2``, ``hf:gpt2-medium``, ``hf:stanford-crfm/alias-gpt2-small-x21``:
  ``HookedTransformer.from_pretrained``) and the sha256 of its source files (config.json and the
  weights file; a file's hash is remembered by its stat signature in ``processed/sources.json`` so
  500 MB are hashed once, not on every load);
* the processing options (:data:`PROCESSING`) and the float dtype;
* the versions of torch, transformers and transformer_lens, the bytes of the loader code
  (common/model.py) and of ``model_fingerprint``'s source, and :data:`FORMAT`.

Entries follow the cache-entry protocol of :mod:`common.disk_cache` (atomic writes; the key and
the checksum of weights.pt checked on every read; a corrupt or stale entry removed and rebuilt with
a one-line note, never used); on top of its checks, ``torch.load`` must succeed and
``load_state_dict(strict=True)`` accept the weights. Entries of the same origin (folder or hub
repo) with another key are removed when a new one is written.

A cache folder that cannot be written (read-only, full, not a folder) gives one line on stderr and
the run continues with the model built in memory, uncached. ``L1H5_WEIGHTS_CACHE=0`` turns the cache
off (every load builds, as before).
"""

from __future__ import annotations

import gc
import hashlib
import inspect
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from common import disk_cache
from common.outputs import cache_dir, model_fingerprint

FORMAT = 1
# TransformerLens' from_pretrained defaults, applied by every route of common.model.
PROCESSING = {
    "fold_ln": True,
    "center_writing_weights": True,
    "center_unembed": True,
    "fold_value_biases": True,
    "refactor_factored_attn_matrices": False,
}
ENV_SWITCH = "L1H5_WEIGHTS_CACHE"
WEIGHTS, SOURCES = "weights.pt", "sources.json"
LABEL = "processed-weights"


@dataclass
class Source:
    """How to build a processed model without the cache, and what the result depends on.

    ``build()`` returns the processed HookedTransformer on CPU (the uncached route);
    ``tokenizer()`` the tokenizer to give a model rebuilt from the cache (``None``: TransformerLens
    loads ``cfg.tokenizer_name`` itself, as ``from_pretrained`` does).
    """

    route: str
    origin: str
    files: dict[str, Path]
    code: str
    build: Callable[[], object]
    tokenizer: Callable[[], object] = field(default=lambda: None)


def enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def root() -> Path:
    return cache_dir() / "processed"


def load_processed(source: Source, device: str = "cpu"):
    """The processed model of ``source`` on ``device``: from the cache if a valid entry exists,
    else built (``source.build()``), saved, and mapped back. See the module docstring."""
    with torch.no_grad():  # building or hashing weights never needs autograd (it would keep copies)
        return _load_processed(source, device)


def _load_processed(source: Source, device: str):
    if not enabled():
        return _to_device(source.build(), device)
    key = make_key(source)
    entry = root() / disk_cache.digest(key)
    model = read_entry(entry, key, source, device)
    if model is not None:
        return model
    built = source.build()
    try:
        write_entry(entry, key, source, built)
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as RuntimeError
        disk_cache.note_unwritable(LABEL, root(), exc)
        return _to_device(built, device)
    model = read_entry(entry, key, source, device)
    if model is None:  # written but not readable back: use the built model, say nothing more
        return _to_device(built, device)
    del built
    gc.collect()
    return model


# ----------------------------------------------------------------------------------------------
# key
# ----------------------------------------------------------------------------------------------


def make_key(source: Source) -> dict:
    from common.outputs import library_versions

    versions = library_versions(("torch", "transformers", "transformer-lens", "safetensors"))
    return {
        "format": FORMAT,
        "route": source.route,
        "files": {name: file_sha256(path) for name, path in sorted(source.files.items())},
        "processing": PROCESSING,
        "dtype": "float32",
        "versions": versions,  # a new transformer_lens (or torch, ...) rebuilds the processed weights
        "loader": source.code,
        "fingerprint_code": hashlib.sha256(inspect.getsource(model_fingerprint).encode()).hexdigest()[:16],
    }


def file_sha256(path: Path) -> str:
    """sha256 of a source file, remembered in ``sources.json`` by its stat signature."""
    real = str(Path(path).resolve())
    sig = disk_cache.stat_signature(Path(real))
    memo_path = root() / SOURCES
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    hit = memo.get(real) if isinstance(memo, dict) else None
    if isinstance(hit, dict) and hit.get("sig") == sig and isinstance(hit.get("sha256"), str):
        return hit["sha256"]
    sha = disk_cache.sha256_file(Path(real))
    memo = memo if isinstance(memo, dict) else {}
    memo[real] = {"sig": sig, "sha256": sha}
    try:  # only a speed-up: a cache folder that cannot be written just means hashing again
        disk_cache.write_cache_text(memo_path, json.dumps(memo, indent=1))
    except OSError:
        pass
    return sha


# ----------------------------------------------------------------------------------------------
# entries
# ----------------------------------------------------------------------------------------------


def read_entry(entry: Path, key: dict, source: Source, device: str):
    """The model of a valid entry, or None (absent; or invalid, which is then removed and noted)."""
    def load(weights: Path, meta: dict):
        return _mapped(weights, meta, source, device)

    return disk_cache.read_entry(entry, key, WEIGHTS, LABEL, load)


def _mapped(weights: Path, meta: dict, source: Source, device: str):
    """The model whose weights are pages of the verified ``weights`` file."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    state_dict = torch.load(weights, map_location="cpu", mmap=True, weights_only=True)
    cfg_dict = dict(meta["cfg"], dtype=torch.float32, device=device, init_weights=False)
    cfg = HookedTransformerConfig.from_dict(cfg_dict)
    model = HookedTransformer(cfg, source.tokenizer(), move_to_device=False)  # empty (untouched) weights
    model.cfg.init_weights = meta["cfg"].get("init_weights", model.cfg.init_weights)  # as built
    model.load_state_dict(state_dict, strict=True, assign=True)
    model = _to_device(model, device)
    model.eval()
    model._l1h5_fingerprint = meta["fingerprint"]
    model._l1h5_processed_cache = str(weights.parent)
    return model


def write_entry(entry: Path, key: dict, source: Source, model) -> None:
    """Save ``model``'s processed state dict as a new entry (:func:`common.disk_cache.write_entry`)."""
    def write(path: Path) -> dict:
        _save_state_dict(model.state_dict(), path)
        return {"cfg": {k: v for k, v in model.cfg.to_dict().items() if k not in ("dtype", "device")},
                "fingerprint": model_fingerprint(model)}

    disk_cache.write_entry(entry, key, WEIGHTS, write, origin=source.origin)


def _save_state_dict(state_dict: dict, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(state_dict, f)
        f.flush()
        os.fsync(f.fileno())


def _to_device(model, device: str):
    if str(device) != "cpu":
        model.cfg.device = device
        model.move_model_modules_to_device()
    return model
