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

An entry is written to a temporary folder beside it and renamed into place (atomic), and used only
if every check passes: entry.json parses and its key equals the wanted key; weights.pt has the
recorded size and sha256 (the hash is re-computed whenever the file's stat signature (size, mtime,
ctime, inode) differs from the one recorded when it was last verified, so any rewrite, truncation
or copy is caught); ``torch.load`` succeeds; ``load_state_dict(strict=True)`` accepts it. A corrupt
or stale entry is removed and rebuilt (a one-line note says so), never used. Entries of the same
origin (folder or hub repo) with another key are removed when a new one is written.

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
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from common.errors import error_summary
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
WEIGHTS, ENTRY, SOURCES = "weights.pt", "entry.json", "sources.json"

_UMASK = os.umask(0)
os.umask(_UMASK)
_NOTED: set[str] = set()  # one note per cache folder and process


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
    entry = root() / digest(key)
    model = read_entry(entry, key, source, device)
    if model is not None:
        return model
    built = source.build()
    try:
        write_entry(entry, key, source, built)
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as RuntimeError
        _note(f"cannot write the processed-weights cache in {root()} ({_reason(exc)}); "
              "continuing without it (set L1H5_CACHE to a writable folder)")
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


def digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def stat_signature(path: Path) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a source file, remembered in ``sources.json`` by its stat signature."""
    real = str(Path(path).resolve())
    sig = stat_signature(Path(real))
    memo_path = root() / SOURCES
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    hit = memo.get(real) if isinstance(memo, dict) else None
    if isinstance(hit, dict) and hit.get("sig") == sig and isinstance(hit.get("sha256"), str):
        return hit["sha256"]
    sha = sha256_file(Path(real))
    memo = memo if isinstance(memo, dict) else {}
    memo[real] = {"sig": sig, "sha256": sha}
    try:  # only a speed-up: a cache folder that cannot be written just means hashing again
        _write_text_atomic(memo_path, json.dumps(memo, indent=1))
    except OSError:
        pass
    return sha


# ----------------------------------------------------------------------------------------------
# entries
# ----------------------------------------------------------------------------------------------


def read_entry(entry: Path, key: dict, source: Source, device: str):
    """The model of a valid entry, or None (absent; or invalid, which is then removed and noted)."""
    return read_checked(entry, "processed-weights", lambda: _read_valid(entry, key, source, device))


def read_checked(entry: Path, label: str, read: Callable):
    """``read()`` of a cache entry, or None: when the entry is absent, or invalid (``read`` raised
    :class:`InvalidEntry` or any error of a damaged file), which is then removed with a one-line
    note ("<label> cache entry ... is ...; rebuilding it"). Shared by every on-disk cache."""
    if not (entry / ENTRY).exists():
        return None
    try:
        return read()
    except InvalidEntry as exc:
        _note(f"{label} cache entry {entry} is {exc}; rebuilding it", once=False)
    except Exception as exc:  # torch.load / np.load / load_state_dict on a damaged file: many types
        _note(f"{label} cache entry {entry} is unreadable ({error_summary(exc)}); rebuilding it", once=False)
    _remove(entry)
    return None


class InvalidEntry(Exception):
    """A cache entry that must not be used (corrupt, stale or incomplete): the message says which."""



def checked_entry(entry: Path, key: dict, data_file: str, of_what: str) -> dict:
    """The metadata (entry.json) of a cache entry whose ``data_file`` is intact, else
    :class:`InvalidEntry`: entry.json parses and holds ``key`` (``of_what``: "model", "text", for
    the message), the data file exists with the byte count written, and its sha256 matches; the
    checksum is recomputed only when the file's stat signature differs from the last verified one
    (then recorded, when the entry is writable). Shared by every on-disk cache of this repository."""
    try:
        meta = json.loads((entry / ENTRY).read_text())
    except ValueError:
        raise InvalidEntry("corrupt (entry.json does not parse)") from None
    if not isinstance(meta, dict) or meta.get("key") != key:
        raise InvalidEntry(f"stale (its key differs from this {of_what}'s)")
    path = entry / data_file
    if not path.exists():
        raise InvalidEntry(f"incomplete ({data_file} missing)")
    sig = stat_signature(path)
    if sig[0] != meta.get("bytes"):
        raise InvalidEntry(f"corrupt ({data_file} has {sig[0]} bytes, {meta.get('bytes')} were written)")
    if sig != meta.get("verified_sig"):
        if sha256_file(path) != meta.get("sha256"):
            raise InvalidEntry(f"corrupt ({data_file} checksum mismatch)")
        meta["verified_sig"] = sig  # verified: remember the file as it is now (if we may write)
        try:
            _write_text_atomic(entry / ENTRY, json.dumps(meta, indent=1))
        except OSError:
            pass
    return meta


def _read_valid(entry: Path, key: dict, source: Source, device: str):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    meta = checked_entry(entry, key, WEIGHTS, "model")
    weights = entry / WEIGHTS
    state_dict = torch.load(weights, map_location="cpu", mmap=True, weights_only=True)
    cfg_dict = dict(meta["cfg"], dtype=torch.float32, device=device, init_weights=False)
    cfg = HookedTransformerConfig.from_dict(cfg_dict)
    model = HookedTransformer(cfg, source.tokenizer(), move_to_device=False)  # empty (untouched) weights
    model.cfg.init_weights = meta["cfg"].get("init_weights", model.cfg.init_weights)  # as built
    model.load_state_dict(state_dict, strict=True, assign=True)
    model = _to_device(model, device)
    model.eval()
    model._l1h5_fingerprint = meta["fingerprint"]
    model._l1h5_processed_cache = str(entry)
    return model


def write_entry(entry: Path, key: dict, source: Source, model) -> None:
    """Save ``model``'s processed state dict as a new entry (:func:`write_new_entry`)."""
    def write(path: Path) -> dict:
        _save_state_dict(model.state_dict(), path)
        return {"cfg": {k: v for k, v in model.cfg.to_dict().items() if k not in ("dtype", "device")},
                "fingerprint": model_fingerprint(model)}

    write_new_entry(entry, WEIGHTS, {"key": key, "origin": source.origin}, write)


def write_new_entry(entry: Path, data_file: str, meta: dict, write: Callable[[Path], dict]) -> None:
    """Write a cache entry atomically; shared by every on-disk cache of this repository.

    ``write(path)`` writes the data file at ``path`` inside a temporary folder beside ``entry`` and
    returns the cache's own entry.json fields; entry.json holds ``meta`` (``key`` and ``origin``),
    those fields, and the data file's size, sha256, verified stat signature and creation time (what
    :func:`checked_entry` checks). The folder is then renamed into place, replacing a folder already
    there (an invalid or incomplete one: a valid entry would have been used); if another process
    put its complete entry there in between, that one is kept. Entries of the same ``origin`` under
    another key are removed afterwards (:func:`_remove_others`).
    """
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
    try:
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700 folders; an entry is as readable as any file
        data = tmp / data_file
        meta = {**meta, **write(data)}
        meta |= {"bytes": data.stat().st_size, "sha256": sha256_file(data), "verified_sig": stat_signature(data),
                 "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (tmp / ENTRY).write_text(json.dumps(meta, indent=1))
        if entry.exists():
            _remove(entry)
        try:
            tmp.rename(entry)
        except OSError:
            if not (entry / ENTRY).exists():
                raise  # not "another process won the race"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _remove_others(entry, meta["origin"])


def _save_state_dict(state_dict: dict, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(state_dict, f)
        f.flush()
        os.fsync(f.fileno())


def _remove_others(entry: Path, origin) -> None:
    """Entries of the same origin under another key are stale: drop them (disk space). Hidden
    folders are other writers' entries in the making (or being removed): left alone."""
    for other in entry.parent.iterdir():
        if other == entry or other.name.startswith(".") or not (other / ENTRY).is_file():
            continue
        try:
            if json.loads((other / ENTRY).read_text()).get("origin") == origin:
                _remove(other)
        except (OSError, ValueError, AttributeError):
            continue


def _remove(entry: Path) -> None:
    """Rename aside, then delete (a reader that already mapped the file keeps its pages)."""
    try:
        aside = entry.with_name(f".{entry.name}.old-{os.getpid()}")
        entry.rename(aside)
    except OSError:
        aside = entry
    shutil.rmtree(aside, ignore_errors=True)


def _to_device(model, device: str):
    if str(device) != "cpu":
        model.cfg.device = device
        model.move_model_modules_to_device()
    return model


def _write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return error_summary(exc)


def _note(message: str, once: bool = True) -> None:
    if once and message in _NOTED:
        return
    _NOTED.add(message)
    print(f"note: {message}", file=sys.stderr, flush=True)
