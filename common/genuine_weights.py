"""Is a loaded GPT-2 checkpoint genuine gpt2-small? Its raw tensors checked against shipped checksums.

``common/data/gpt2_small_fingerprints.json`` holds the sha256 of all 148 gpt2-small parameter
tensors (provenance and byte layout: ``common/data/PROVENANCE.md``). :func:`verify_checkpoint`
hashes every tensor of a checkpoint file (``model.safetensors`` or ``pytorch_model.bin``, from a
local folder or the Hugging Face cache) the same way and returns a :class:`Verdict` whose text is
one of

* ``"genuine gpt2-small (148/148 tensors verified)"``,
* ``"not gpt2-small: N tensors differ (names)"`` (a missing or mis-shaped tensor counts as
  differing; names are grouped over layers, e.g. ``h.0-11.mlp.c_fc.weight``),
* ``"planted"`` for the planted demo model (:func:`weights_verdict` with ``"planted"``),
* ``"unverified: ..."`` when no checkpoint file can be found for a model name.

The verdict is cached on disk under ``cache_dir()/genuine/`` (written atomically), keyed by the
file's identity: resolved path, size and modification time (plus the checksum table and this
module's version), so it costs a full hash (about 0.5 GB for gpt2-small) once per file.

This module only verifies. A script passes its :class:`Verdict` to ``common.results.save_results``,
which writes ``Verdict.to_meta()`` into meta.json (:func:`weights_meta` for a meta.json written
directly); ``common.results.verdict_text`` reads the text back from a run's meta, and the figures'
footnote (``common.plotting.save_figure``) is given that text by the render that draws them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from common.outputs import atomic_path, cache_dir
from common.planted_names import is_planted, planted_label

FINGERPRINTS = Path(__file__).resolve().parent / "data" / "gpt2_small_fingerprints.json"
VERDICT_VERSION = "genuine-v1"  # bump when the hashing or the verdict format changes
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
HF_REPOS = ("gpt2", "openai-community/gpt2")  # TransformerLens' gpt2-small is the hub's "gpt2"
REAL_NAMES = ("gpt2-small", "gpt2")
PLANTED = "planted"


@dataclass
class Verdict:
    """The outcome of checking one checkpoint. ``text`` is what meta.json, INDEX.md and figures show."""

    status: str  # "genuine" | "not gpt2-small" | "planted" | "unverified"
    text: str
    n_verified: int = 0
    n_total: int = 0
    differing: list[str] = field(default_factory=list)  # includes missing and mis-shaped tensors
    missing: list[str] = field(default_factory=list)
    checkpoint: str | None = None
    seconds: float = 0.0  # time of the hashing run that produced the verdict
    cached: bool = False  # True when read from the on-disk cache

    @property
    def genuine(self) -> bool:
        return self.status == "genuine"

    def verifies(self, names) -> bool:
        """True when every named tensor is verified genuine (e.g. all an analysis reads), even if
        the checkpoint as a whole is not gpt2-small."""
        return self.n_total > 0 and not set(names) & set(self.differing)

    def to_meta(self) -> dict:
        """JSON-ready record for meta.json (``verdict`` is the one-line text)."""
        d = asdict(self)
        d["verdict"] = d.pop("text")
        return d


@lru_cache(maxsize=1)
def load_fingerprints() -> dict[str, dict]:
    """name -> {"sha256", "bytes", "transposed"} for gpt2-small's 148 tensors."""
    return json.loads(FINGERPRINTS.read_text())["tensors"]


def _table_digest() -> str:
    return hashlib.sha256(FINGERPRINTS.read_bytes()).hexdigest()[:16]


def tensor_sha256(array: np.ndarray, transposed: bool) -> str:
    """sha256 of the raw little-endian float32 bytes, transposed first where the table says so
    (the transpose is hashed in blocks of rows: no full transposed copy)."""
    a = np.asarray(array)
    if a.dtype != np.dtype("<f4"):
        a = a.astype("<f4")  # a float16/bfloat16/float64 checkpoint cannot match float32 checksums
    if not (transposed and a.ndim == 2):
        return hashlib.sha256(np.ascontiguousarray(a).data).hexdigest()
    h = hashlib.sha256()
    for i in range(0, a.shape[1], 256):  # rows i.. of a.T are columns i.. of a
        h.update(np.ascontiguousarray(a[:, i : i + 256].T).data)
    return h.hexdigest()


def _normalise(name: str) -> str:
    return name.removeprefix("transformer.")


def _iter_safetensors_f32(path: Path):
    """(name, array) of every tensor of a safetensors file whose tensors are all float32, read one
    at a time with plain file reads (the safetensors layout: an 8-byte little-endian header length,
    a JSON header of dtype, shape and byte offsets, then the data), so at most one tensor is in
    memory; safe_open would map the whole file into the process (0.5 GB at gpt2-small size) on top
    of the model the script already holds. Returns False without yielding when the file holds
    another dtype."""
    import json

    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        if any(v.get("dtype") != "F32" for v in header.values()):
            return False
        for k, v in header.items():
            start, end = v["data_offsets"]
            f.seek(8 + n + start)
            arr = np.frombuffer(f.read(end - start), dtype="<f4").reshape(v["shape"])
            yield _normalise(k), arr
    return True


def _iter_tensors(path: Path):
    """(name, numpy array) of every tensor in a safetensors or pytorch_model.bin file."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        if (yield from _iter_safetensors_f32(path)) is not False:
            return

        try:
            with safe_open(str(path), framework="np") as f:
                for k in f.keys():
                    yield _normalise(k), f.get_tensor(k)
            return
        except TypeError:  # bfloat16 has no numpy dtype: fall back to torch
            pass
        with safe_open(str(path), framework="pt") as f:
            for k in f.keys():
                yield _normalise(k), f.get_tensor(k).float().numpy()
        return
    import torch

    sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    for k, v in sd.items():
        if torch.is_tensor(v):
            yield _normalise(k), (v if v.dtype == torch.float32 else v.float()).numpy()


def hash_checkpoint(path: str | Path) -> dict[str, str | None]:
    """sha256 (as in the fingerprint table) of each of the 148 gpt2-small tensors found in ``path``;
    None for a tensor whose size does not match (its hash is not computed). Other tensors
    (attention mask buffers, a tied lm_head) are ignored."""
    table = load_fingerprints()
    out: dict[str, str | None] = {}
    for name, arr in _iter_tensors(Path(path)):
        entry = table.get(name)
        if entry is None or name in out:
            continue
        if arr.size * 4 != entry["bytes"] or arr.ndim not in (1, 2):
            out[name] = None
            continue
        out[name] = tensor_sha256(arr, entry["transposed"])
    return out


def compact_names(names: list[str]) -> str:
    """Group per-layer names: ["h.0.mlp.c_fc.weight", ..., "h.11.mlp.c_fc.weight"] -> "h.0-11.mlp.c_fc.weight"."""
    groups: dict[str, list[int]] = {}
    order: list[str] = []
    for n in names:
        m = re.fullmatch(r"h\.(\d+)\.(.+)", n)
        key = m.group(2) if m else n
        if key not in groups:
            groups[key] = []
            order.append(key)
        if m:
            groups[key].append(int(m.group(1)))
    parts = []
    for key in sorted(order, key=lambda k: (bool(groups[k]), k)):  # whole-model tensors first
        layers = sorted(set(groups[key]))
        if not layers:
            parts.append(key)
            continue
        runs, start = [], layers[0]
        for a, b in zip(layers, layers[1:] + [None]):
            if b != a + 1:
                runs.append(f"{start}" if start == a else f"{start}-{a}")
                start = b
        parts.append(f"h.{','.join(runs)}.{key}")
    return ", ".join(parts)


def _verdict_from_hashes(hashes: dict[str, str | None], checkpoint: str, seconds: float) -> Verdict:
    table = load_fingerprints()
    missing = [n for n in table if n not in hashes]
    differing = [n for n in table if hashes.get(n) != table[n]["sha256"]]
    n_total = len(table)
    n_ok = n_total - len(differing)
    if not differing:
        text, status = f"genuine gpt2-small ({n_ok}/{n_total} tensors verified)", "genuine"
    else:
        text = f"not gpt2-small: {len(differing)} tensors differ ({compact_names(differing)})"
        status = "not gpt2-small"
    return Verdict(status, text, n_ok, n_total, differing, missing, checkpoint, seconds)


def file_identity(path: str | Path) -> dict:
    """What the cached verdict is keyed by: resolved path (HF cache symlinks followed), size, mtime."""
    p = Path(path).resolve()
    st = p.stat()
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _cache_file(identity: dict) -> Path:
    key = json.dumps([VERDICT_VERSION, _table_digest(), identity], sort_keys=True)
    return cache_dir() / "genuine" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"


def verify_checkpoint(path: str | Path, use_cache: bool = True) -> Verdict:
    """Check every tensor of the checkpoint file ``path`` against the gpt2-small checksums.

    Cached by :func:`file_identity` (atomic JSON under ``cache_dir()/genuine``); a corrupt cache
    entry is recomputed, never trusted. Raises FileNotFoundError for a missing file.
    """
    path = Path(path)
    identity = file_identity(path)
    cfile = _cache_file(identity)
    if use_cache and cfile.exists():
        try:
            d = json.loads(cfile.read_text())
            if d.get("identity") == identity:
                v = Verdict(**d["verdict"])
                v.cached = True
                return v
        except (ValueError, TypeError, KeyError):
            pass
    t0 = time.perf_counter()
    hashes = hash_checkpoint(path)
    verdict = _verdict_from_hashes(hashes, identity["path"], time.perf_counter() - t0)
    if use_cache:
        try:
            cfile.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(cfile, record=False) as tmp:
                tmp.write_text(json.dumps({"identity": identity, "verdict": asdict(verdict)}, indent=1))
        except OSError:
            pass  # an unwritable cache folder: the verdict stands, uncached (not "could not be read")
    return verdict


def checkpoint_file(model: str, hf_cache: str | Path | None = None) -> Path | None:
    """The weights file a model name loads from: a local folder's ``model.safetensors`` /
    ``pytorch_model.bin`` (or the file itself), or, for ``gpt2-small``/``gpt2``, the Hugging Face
    cache entry of ``gpt2`` (``hf_cache`` defaults to huggingface_hub's HF_HUB_CACHE). None if absent."""
    if model in REAL_NAMES:
        from huggingface_hub import try_to_load_from_cache

        for repo in HF_REPOS:
            for fname in WEIGHT_FILES:
                got = try_to_load_from_cache(repo, fname, cache_dir=hf_cache)
                if isinstance(got, (str, os.PathLike)) and Path(got).exists():
                    return Path(got)
        return None
    p = Path(model).expanduser()
    if p.is_file():
        return p
    for fname in WEIGHT_FILES:
        if (p / fname).is_file():
            return p / fname
    return None


def weights_verdict(model: str, hf_cache: str | Path | None = None, use_cache: bool = True) -> Verdict:
    """The verdict for a ``--model`` value: ``"planted"``, or the checkpoint it loads, verified.
    Never raises for an unreadable file: the verdict then says "unverified: <why>"."""
    if is_planted(model):  # the plain planted model or a twin: ``planted`` / ``planted:<twin>``
        return Verdict("planted", planted_label(model))
    path = checkpoint_file(model, hf_cache)
    if path is None:
        return Verdict("unverified", f"unverified: no checkpoint file found for {model!r}")
    try:
        return verify_checkpoint(path, use_cache=use_cache)
    except Exception as exc:  # safetensors/torch raise many types; the run itself must not fail here
        from common.errors import error_summary

        return Verdict("unverified", f"unverified: {path} could not be read ({error_summary(exc)})",
                       checkpoint=str(path))


def weights_meta(model: str | None) -> dict:
    """``{"weights": <verdict record>}`` for meta.json (empty when there is no model name)."""
    return {"weights": weights_verdict(model).to_meta()} if model else {}
