"""Token ids of a script's natural text, with the on-disk cache for ``--text PATH``.

:func:`script_text_ids` is what a script calls: ``--text PATH`` if given, the demo text for the
planted model, else WikiText-103's test split (the sources, chunking and encoding:
:mod:`common.natural_text`). Only ``--text PATH`` is cached: WikiText-103's test split (~1.3 MB,
from ``datasets``) and the demo text (~0.1 MB) are strings in memory already and are tokenised in
well under a second.

**Cache** (:func:`file_ids`): the ids are saved once under ``cache_dir()/text_ids/<digest>/``
(``ids.npy``, ``entry.json``) and memory-mapped back (``np.load(mmap_mode="r")``), so every script
and process shares one tokenisation and its pages. ``<digest>`` is :func:`common.disk_cache.digest`
of the key, everything the ids depend on:

* every file, in reading order, by resolved path and stat signature (size, mtime, ctime, inode):
  a stat costs nothing where hashing 540 MB would cost about a second per run, and any write to a
  file changes its mtime and ctime (ctime cannot be set back), so a changed file is never taken
  for the old one (a copy elsewhere is tokenised again: a cheap miss, never a wrong hit);
* the tokenizer: GPT-2's BPE (by the sha256 pins of the vendored files) or, for another
  tokenizer, the sha256 of its serialised Hugging Face form; the encoding backend and its version;
* :data:`common.natural_text.CHUNK_CHARS`, the id dtype, :data:`TEXT_IDS_FORMAT` and the source of
  the functions that read, chunk and encode the text (:func:`common.natural_text.ids_code_digest`).

Entries follow the cache-entry protocol of :mod:`common.disk_cache` (atomic writes; key and
checksum checked on every read; a corrupt or stale entry removed and rebuilt with a one-line note;
an unwritable cache folder means ids in memory, with a one-line note); on top of its checks,
ids.npy must map with the recorded dtype and length. The ids are streamed into the entry, never
held whole. Entries of the same files and tokenizer under another key are removed when a new one
is written. ``L1H5_TEXT_CACHE=0`` turns the cache off.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np

from common import disk_cache, natural_text
from common.natural_text import DEMO, FileIdStream, TextUnavailable, encoder_backend, ids_dtype
from common.planted_names import is_planted

TEXT_IDS_FORMAT = 1
ENV_SWITCH = "L1H5_TEXT_CACHE"
IDS, LABEL = "ids.npy", "text-ids"
NPY_HEADER_BYTES = 128  # a 1-D .npy header (format 1.0) for any length below 10**30


def script_text_ids(text: str | None, model: str, tokenizer) -> tuple[np.ndarray, str]:
    """(token ids, description) of a script's natural text: ``--text PATH`` if given, the demo text
    for the planted model, else WikiText-103's test split; a one-line SystemExit when unavailable.
    The ids are a read-only 1-D array (memory-mapped from the cache for ``--text PATH``)."""
    source = text if text is not None else (DEMO if is_planted(model) else None)
    try:
        return text_ids(source, tokenizer)
    except TextUnavailable as exc:
        raise SystemExit(f"error: {exc}") from None


def text_ids(source: str | None, tokenizer) -> tuple[np.ndarray, str]:
    """(token ids, description) for ``source``: None (WikiText-103 test), ``"demo"`` or a path
    (cached, :func:`file_ids`). Raises :class:`common.natural_text.TextUnavailable`."""
    if source is None or source == DEMO:
        text, description = natural_text.load_text(source)
        return natural_text.tokenize_ids(tokenizer, text), description
    return file_ids(source, tokenizer), f"local text {source}"


def cache_enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def cache_root() -> Path:
    from common.outputs import cache_dir

    return cache_dir() / "text_ids"


def tokenizer_identity(tokenizer) -> str | None:
    """What decides ``tokenizer``'s ids: GPT-2's BPE (the vendored files' sha256 pins), else the
    sha256 of its serialised Hugging Face form; None when it has none (then nothing is cached)."""
    from common.freq import MERGES_SHA256, VOCAB_SHA256, is_gpt2_tokenizer

    if is_gpt2_tokenizer(tokenizer):
        return f"gpt2-bpe:{MERGES_SHA256[:16]}:{VOCAB_SHA256[:16]}"
    try:
        serial = tokenizer.backend_tokenizer.to_str()
    except Exception:  # a slow (pure Python) tokenizer: no serialised form to key on
        return None
    return f"hf:{type(tokenizer).__name__}:{hashlib.sha256(serial.encode()).hexdigest()[:24]}"


def _backend_version(backend: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tiktoken" if backend == "tiktoken" else "tokenizers")
    except PackageNotFoundError:
        return "unknown"


def cache_key(files: list[Path], tokenizer, backend: str) -> dict | None:
    """The key of ``files``' ids (module docstring), or None when the tokenizer has no identity."""
    ident = tokenizer_identity(tokenizer)
    if ident is None:
        return None
    sigs = []
    for f in files:
        real = Path(f).resolve()
        st = os.stat(real)
        sigs.append([str(real), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino])
    return {
        "format": TEXT_IDS_FORMAT,
        "files": sigs,
        "tokenizer": ident,
        "backend": [backend, _backend_version(backend)],
        "chunk_chars": natural_text.CHUNK_CHARS,
        "dtype": ids_dtype(tokenizer).str,
        "code": natural_text.ids_code_digest(),
    }


def file_ids(path: str | Path, tokenizer) -> np.ndarray:
    """Token ids of ``--text PATH``: from the cache when a valid entry exists, else streamed,
    encoded, saved and mapped back (module docstring). Raises :class:`TextUnavailable`."""
    files = natural_text.text_files(path)
    backend = encoder_backend(tokenizer)
    stream = FileIdStream(path, files, tokenizer, backend)
    key = cache_key(files, tokenizer, backend) if cache_enabled() else None
    if key is None:
        return stream.in_memory()
    entry = cache_root() / disk_cache.digest(key)
    ids = read_entry(entry, key)
    if ids is not None:
        return ids
    origin = {"files": [s[0] for s in key["files"]], "tokenizer": key["tokenizer"]}
    try:
        write_entry(entry, key, origin, stream)
    except OSError as exc:  # unwritable, full, not a folder: the text is still readable (TextUnavailable otherwise)
        disk_cache.note_unwritable(LABEL, cache_root(), exc)
        return stream.in_memory()
    ids = read_entry(entry, key)
    return ids if ids is not None else stream.in_memory()


def _npy_header(dtype: np.dtype, n: int) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (n,)})
    return buf.getvalue()


def write_entry(entry: Path, key: dict, origin: dict, stream: FileIdStream) -> None:
    """Stream the ids into a new entry (:func:`common.disk_cache.write_entry`; module docstring)."""
    def write(path: Path) -> dict:
        dtype = ids_dtype(stream.tokenizer)
        n = 0
        with open(path, "wb") as f:
            f.write(b"\0" * NPY_HEADER_BYTES)  # the header needs the length: written last
            for part in stream:
                f.write(part.tobytes())
                n += len(part)
            header = _npy_header(dtype, n)
            if len(header) != NPY_HEADER_BYTES:
                raise OSError(f"unexpected .npy header size {len(header)}")
            f.seek(0)
            f.write(header)
            f.flush()
            os.fsync(f.fileno())
        return {"dtype": dtype.str, "n_tokens": n}

    disk_cache.write_entry(entry, key, IDS, write, origin=origin)


def read_entry(entry: Path, key: dict) -> np.ndarray | None:
    """The memory-mapped ids of a valid entry, or None (absent; or invalid: removed and noted)."""
    return disk_cache.read_entry(entry, key, IDS, LABEL, _mapped_ids)


def _mapped_ids(path: Path, meta: dict) -> np.ndarray:
    ids = np.load(path, mmap_mode="r", allow_pickle=False)
    if ids.dtype.str != meta.get("dtype") or ids.shape != (meta.get("n_tokens"),):
        raise disk_cache.InvalidEntry(f"corrupt ({IDS} holds {ids.dtype} {ids.shape}, "
                                      f"{meta.get('dtype')} ({meta.get('n_tokens')},) were written)")
    return ids
