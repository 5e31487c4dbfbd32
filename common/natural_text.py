"""Natural text for measuring a head's effect: WikiText-103, local files, or a generated demo text.

Three sources, one result (the GPT-2 token ids of the whole text, a 1-D numpy array):

* WikiText-103 (raw, test split) through ``datasets``; offline without a cached copy this fails
  with :class:`TextUnavailable`, whose message says what to do instead;
* ``--text PATH``: a text file, or a folder whose ``*.txt`` files (recursively, sorted) are read;
* ``demo``: the repo's deterministic demo corpus (:mod:`common.demo_corpus`, also token_freq.py's
  planted input): English sentences in which words of :data:`common.prompts.CATEGORIES` recur,
  so L1H5's rules are exercised in every window.

**The text** of ``--text PATH`` is each file decoded as UTF-8 (undecodable bytes become U+FFFD),
read in text mode ("\r\n" and a lone "\r" read as "\n"), files joined by one "\n".

**Token ids** (:func:`tokenize_ids`): the text is cut into line-aligned chunks, each one the
shortest run of whole lines (lines as ``str.splitlines`` sees them) of at least
:data:`CHUNK_CHARS` characters (the last chunk may be shorter), and every chunk is encoded on its
own, without BOS. Token ids are therefore a fixed function of the text, whatever reads it; a
chunk boundary can split a whitespace run that one encoding of the whole text would have merged
(e.g. "\n\n" as two "\n" tokens), once per 100,000 characters.

Encoder: for GPT-2's tokenizer (:func:`common.freq.is_gpt2_tokenizer`) tiktoken built from the
vendored GPT-2 BPE (:func:`common.freq.tiktoken_encoding`), with "<|endoftext|>" read as the
special token 50256 as the Hugging Face tokenizer does; it gives exactly the Hugging Face
tokenizer's ids (tests/test_natural_text.py, tests/test_freq_counting.py), about 15 times faster
and without a Python int per token. Without tiktoken, or for another tokenizer, the Hugging Face
tokenizer itself encodes the chunks (8 per call).

Ids are uint16 (:func:`ids_dtype`): GPT-2's 50,257 ids fit, and WikiText-103's train split
(~540 MB, ~120 M tokens) takes 0.24 GB instead of 0.48 GB (int32) or several GB (a list of Python
ints), so even a pass over every token stays far below a script's 1.5 GB; a tokenizer with more
than 65,536 ids gets int32. Consumers take slices (:func:`sample_windows`) and widen only those.

**Memory**: files are streamed (:func:`text_pieces`, a few MB at a time) into chunks and each
chunk's ids are written out at once; neither the text nor a list of ids ever exists whole.

**Cache** (``--text PATH`` only; :func:`file_ids`): the ids are saved once under
``cache_dir()/text_ids/<digest>/`` (``ids.npy``, ``entry.json``) and memory-mapped back
(``np.load(mmap_mode="r")``), so every script and process shares one tokenisation and its pages.
``<digest>`` is the sha256 of the key, everything the ids depend on:

* every file, in reading order, by resolved path and stat signature (size, mtime, ctime, inode):
  a stat costs nothing where hashing 540 MB would cost about a second per run, and any write to a
  file changes its mtime and ctime (ctime cannot be set back), so a changed file is never taken
  for the old one (a copy elsewhere is tokenised again: a cheap miss, never a wrong hit);
* the tokenizer: GPT-2's BPE (by the sha256 pins of the vendored files) or, for another
  tokenizer, the sha256 of its serialised Hugging Face form; the encoding backend and its version;
* :data:`CHUNK_CHARS`, the id dtype, :data:`TEXT_IDS_FORMAT` and the source of the functions that
  read, chunk and encode the text.

An entry is written to a temporary folder beside it and renamed into place (atomic), and used only
if entry.json parses with the wanted key, ids.npy has the recorded size and (whenever its stat
signature differs from the one last verified) sha256, and it maps with the recorded dtype and
length; a corrupt or stale entry is removed and rebuilt (a one-line note says so). Entries of the
same files and tokenizer under another key are removed when a new one is written. A cache folder
that cannot be written gives one note line and the run continues uncached (ids in memory);
``L1H5_TEXT_CACHE=0`` turns the cache off. WikiText-103's test split (~1.3 MB, from ``datasets``)
and the demo text (~0.1 MB) are strings in memory already and are tokenised in well under a second:
they are not cached.

:func:`sample_windows` cuts the token stream into non-overlapping windows, draws a seeded sample
of them and prepends BOS to each.

Words in running text: a word may be one token with or without a leading space (" Monday",
"Monday" at a line start) or several tokens ("Redistribution" is "Red" + "ist" + ...).
:class:`WordBoundaries` says, for every position of a token window, whether its token is a whole
word there: it starts a word (it begins with a space or punctuation, or the token before it
ends in one) and the word ends with it (the next token begins with a space or punctuation, or the
window ends). A category token that is only a piece of a longer word is not that category's word.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.errors import error_summary
from common.planted_names import is_planted

WIKITEXT = ("Salesforce/wikitext", "wikitext-103-raw-v1", "test")
DEMO = "demo"
CHUNK_CHARS = 100_000  # characters per encoded chunk (at least; whole lines)
HF_GROUP = 8  # chunks per Hugging Face tokenizer call (fallback route)
PIECE_CHARS = 1 << 22  # characters read from a file at a time
TEXT_IDS_FORMAT = 1
ENV_SWITCH = "L1H5_TEXT_CACHE"
IDS, ENTRY = "ids.npy", "entry.json"
NPY_HEADER_BYTES = 128  # a 1-D .npy header (format 1.0) for any length below 10**30


class TextUnavailable(RuntimeError):
    """The requested text cannot be read; the message names the fix."""


def wikitext_test() -> str:
    """The WikiText-103 test split as one string (``datasets``; Hugging Face cache or hub)."""
    try:
        import datasets

        datasets.logging.set_verbosity_error()
        datasets.disable_progress_bars()
        repo, config, split = WIKITEXT
        ds = datasets.load_dataset(repo, config, split=split)
    except Exception as exc:  # offline, missing cache, hub errors: all mean "no corpus"
        raise TextUnavailable(
            f"could not load WikiText-103 ({error_summary(exc)}).\n"
            "Options:\n"
            "  * online: run once with network access so `datasets` caches it;\n"
            "  * offline: --text PATH (a .txt file or a folder of .txt files);\n"
            "  * the generated demo text: --text demo"
        ) from None
    return "".join(ds["text"])


def text_files(path: str | Path) -> list[Path]:
    """The files ``--text PATH`` reads, in order: the file itself, or the folder's ``*.txt`` files
    (recursive, sorted)."""
    path = Path(path).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise TextUnavailable(f"--text {path}: folder contains no .txt files")
        return files
    if path.is_file():
        return [path]
    raise TextUnavailable(f"--text {path}: no such file or folder")


def text_pieces(files: Iterable[Path], piece_chars: int | None = None) -> Iterator[str]:
    """The text of ``files`` (module docstring) as pieces of at most ``piece_chars`` characters
    (default :data:`PIECE_CHARS`)."""
    piece_chars = piece_chars or PIECE_CHARS
    for i, f in enumerate(files):
        if i:
            yield "\n"
        try:
            with open(f, encoding="utf-8", errors="replace") as fh:
                while piece := fh.read(piece_chars):
                    yield piece
        except OSError as exc:
            raise TextUnavailable(f"--text {f}: cannot read ({exc.strerror or exc})") from None


def read_text_path(path: str | Path) -> str:
    """A file's text, or the concatenated ``*.txt`` files under a folder (sorted, recursive)."""
    text = "".join(text_pieces(text_files(path)))
    if not text.strip():
        raise TextUnavailable(f"--text {path}: the text is empty")
    return text


def load_text(source: str | None) -> tuple[str, str]:
    """(text, description) for ``source``: None (WikiText-103 test), ``"demo"`` or a path."""
    if source is None:
        return wikitext_test(), "WikiText-103 (raw) test split via datasets"
    if source == DEMO:
        from common.demo_corpus import demo_text

        return demo_text(), "generated demo corpus (common.demo_corpus)"
    return read_text_path(source), f"local text {source}"


# str.splitlines' line boundaries ("\r\n" is one); a chunk ends right after one of them.
_LINE_END = re.compile("\r\n|[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


def line_chunks(pieces: Iterable[str], chunk_chars: int | None = None) -> Iterator[str]:
    """The text of ``pieces`` cut into chunks: each the shortest run of whole lines (as
    ``str.splitlines(keepends=True)`` splits them) of at least ``chunk_chars`` characters; the
    last one is the rest (default ``chunk_chars``: :data:`CHUNK_CHARS`). Only a piece's worth of
    text (or one line, if longer) is held at a time."""
    chunk_chars = chunk_chars or CHUNK_CHARS
    buf, p = "", 0
    for piece in pieces:
        buf = buf[p:] + piece if p < len(buf) else piece
        p = 0
        while len(buf) - p >= chunk_chars:
            m = _LINE_END.search(buf, p + chunk_chars - 1)
            if m is None or (m.end() == len(buf) and m.group() == "\r"):  # the line (or its "\r\n") may go on
                break
            yield buf[p : m.end()]
            p = m.end()
    rest = buf[p:]
    while rest:  # the last piece's lines (a final "\r" now ends its line)
        m = _LINE_END.search(rest, chunk_chars - 1) if len(rest) >= chunk_chars else None
        yield rest[: m.end()] if m else rest
        rest = rest[m.end() :] if m else ""


def ids_dtype(tokenizer) -> np.dtype:
    """uint16 when every id of ``tokenizer`` fits (GPT-2: 50,257), else int32 (little-endian)."""
    return np.dtype("<u2") if len(tokenizer) <= 1 << 16 else np.dtype("<i4")


def encoder_backend(tokenizer) -> str:
    """"tiktoken" for GPT-2's tokenizer when tiktoken is installed, else "huggingface" (checked
    without building the encoding, which only a cache miss needs)."""
    from importlib.util import find_spec

    from common.freq import is_gpt2_tokenizer

    return "tiktoken" if find_spec("tiktoken") is not None and is_gpt2_tokenizer(tokenizer) else "huggingface"


def encode_chunks(chunks: Iterable[str], tokenizer, backend: str | None = None) -> Iterator[np.ndarray]:
    """The ids of each chunk, encoded on its own (no BOS), as :func:`ids_dtype` arrays; ``backend``
    (default :func:`encoder_backend`) "tiktoken" falls back to the tokenizer if tiktoken fails to load."""
    from common.freq import tiktoken_encoding

    dtype = ids_dtype(tokenizer)
    encoding = tiktoken_encoding() if (backend or encoder_backend(tokenizer)) == "tiktoken" else None
    if encoding is not None:
        for chunk in chunks:
            yield encoding.encode_to_numpy(chunk, allowed_special="all").astype(dtype)
        return
    group: list[str] = []
    for chunk in _with_end(chunks):
        if chunk is not None:
            group.append(chunk)
        if group and (chunk is None or len(group) == HF_GROUP):
            for enc in tokenizer(group, add_special_tokens=False, return_attention_mask=False)["input_ids"]:
                yield np.asarray(enc, dtype=dtype)
            group = []


def _with_end(items: Iterable) -> Iterator:
    yield from items
    yield None


def tokenize_ids(tokenizer, text: str, backend: str | None = None, chunk_chars: int | None = None) -> np.ndarray:
    """GPT-2 token ids of ``text`` (chunked and encoded as in the module docstring), 1-D array."""
    parts = list(encode_chunks(line_chunks([text], chunk_chars), tokenizer, backend))
    return np.concatenate(parts) if parts else np.zeros(0, ids_dtype(tokenizer))


def tokenize(tokenizer, text: str) -> list[int]:
    """:func:`tokenize_ids` as a list of Python ints (for short texts)."""
    return tokenize_ids(tokenizer, text).tolist()


def text_ids(source: str | None, tokenizer) -> tuple[np.ndarray, str]:
    """(token ids, description) for ``source``: None (WikiText-103 test), ``"demo"`` or a path
    (cached, :func:`file_ids`). Raises :class:`TextUnavailable`."""
    if source is None or source == DEMO:
        text, description = load_text(source)
        return tokenize_ids(tokenizer, text), description
    return file_ids(source, tokenizer), f"local text {source}"


def script_text_ids(text: str | None, model: str, tokenizer) -> tuple[np.ndarray, str]:
    """(token ids, description) of a script's natural text: ``--text PATH`` if given, the demo text
    for the planted model, else WikiText-103's test split; a one-line SystemExit when unavailable.
    The ids are a read-only 1-D array (memory-mapped from the cache for ``--text PATH``)."""
    source = text if text is not None else (DEMO if is_planted(model) else None)
    try:
        return text_ids(source, tokenizer)
    except TextUnavailable as exc:
        raise SystemExit(f"error: {exc}") from None


# ----------------------------------------------------------------------------------------------
# ids of files: streamed, cached (module docstring)
# ----------------------------------------------------------------------------------------------


class _Stream:
    """The ids of files, chunk by chunk; notes whether the text has anything but whitespace."""

    def __init__(self, path, files: list[Path], tokenizer, backend: str):
        self.path, self.files, self.tokenizer, self.backend = path, files, tokenizer, backend
        self.blank = True

    def _pieces(self) -> Iterator[str]:
        for piece in text_pieces(self.files):
            if self.blank and piece.strip():
                self.blank = False
            yield piece

    def __iter__(self) -> Iterator[np.ndarray]:
        yield from encode_chunks(line_chunks(self._pieces()), self.tokenizer, self.backend)
        if self.blank:
            raise TextUnavailable(f"--text {self.path}: the text is empty")


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


_CODE = None


def _code_digest() -> str:
    """sha256 (16 hex) of the source of every function that decides the ids of a file."""
    global _CODE
    if _CODE is None:
        src = "".join(inspect.getsource(f) for f in (text_files, text_pieces, line_chunks, ids_dtype,
                                                       encode_chunks, _Stream))
        _CODE = hashlib.sha256((src + _LINE_END.pattern).encode()).hexdigest()[:16]
    return _CODE


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
        "chunk_chars": CHUNK_CHARS,
        "dtype": ids_dtype(tokenizer).str,
        "code": _code_digest(),
    }


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:24]


def file_ids(path: str | Path, tokenizer) -> np.ndarray:
    """Token ids of ``--text PATH``: from the cache when a valid entry exists, else streamed,
    encoded, saved and mapped back (module docstring). Raises :class:`TextUnavailable`."""
    files = text_files(path)
    backend = encoder_backend(tokenizer)
    stream = _Stream(path, files, tokenizer, backend)
    key = cache_key(files, tokenizer, backend) if cache_enabled() else None
    if key is None:
        return _in_memory(stream)
    entry = cache_root() / _digest(key)
    ids = read_entry(entry, key)
    if ids is not None:
        return ids
    origin = {"files": [s[0] for s in key["files"]], "tokenizer": key["tokenizer"]}
    try:
        write_entry(entry, key, origin, stream)
    except OSError as exc:  # unwritable, full, not a folder: the text is still readable (TextUnavailable otherwise)
        from common.weights_cache import _note, _reason

        _note(f"cannot write the text-ids cache in {cache_root()} ({_reason(exc)}); "
              "continuing without it (set L1H5_CACHE to a writable folder)")
        return _in_memory(stream)
    ids = read_entry(entry, key)
    return ids if ids is not None else _in_memory(stream)


def _in_memory(stream: _Stream) -> np.ndarray:
    parts = list(stream)
    return np.concatenate(parts) if parts else np.zeros(0, ids_dtype(stream.tokenizer))


def _npy_header(dtype: np.dtype, n: int) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (n,)})
    return buf.getvalue()


def write_entry(entry: Path, key: dict, origin: dict, stream: _Stream) -> None:
    """Stream the ids into a new entry (:func:`common.weights_cache.write_new_entry`; module docstring)."""
    from common.weights_cache import write_new_entry

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

    write_new_entry(entry, IDS, {"key": key, "origin": origin}, write)


def read_entry(entry: Path, key: dict) -> np.ndarray | None:
    """The memory-mapped ids of a valid entry, or None (absent; or invalid: removed and noted)."""
    from common.weights_cache import read_checked

    return read_checked(entry, "text-ids", lambda: _read_valid(entry, key))


def _read_valid(entry: Path, key: dict) -> np.ndarray:
    from common.weights_cache import InvalidEntry, checked_entry

    meta = checked_entry(entry, key, IDS, "text")
    ids = np.load(entry / IDS, mmap_mode="r", allow_pickle=False)
    if ids.dtype.str != meta.get("dtype") or ids.shape != (meta.get("n_tokens"),):
        raise InvalidEntry(f"corrupt ({IDS} holds {ids.dtype} {ids.shape}, "
                           f"{meta.get('dtype')} ({meta.get('n_tokens')},) were written)")
    return ids


def sample_windows(ids, window_len: int, n_windows: int, bos_id: int, seed: int = 0) -> tuple[torch.Tensor, list[int]]:
    """A seeded sample of non-overlapping windows, each BOS + ``window_len - 1`` tokens.

    ``ids``: a 1-D array (or list) of token ids; only the sampled windows are read.
    Returns (tokens [n, window_len] int64, start offset of each window in ``ids``). Raises
    ValueError when the text is shorter than one window; returns fewer than ``n_windows`` windows
    when the text has fewer (the caller reports it).
    """
    if window_len < 2:
        raise ValueError(f"window length {window_len} must be at least 2 (BOS plus one token)")
    body = window_len - 1
    n_avail = len(ids) // body
    if n_avail < 1:
        raise ValueError(
            f"the text has {len(ids)} tokens, shorter than one window of {body} tokens "
            f"(--window-len {window_len} includes BOS); give more text or a shorter --window-len"
        )
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(n_avail, size=min(n_windows, n_avail), replace=False))
    starts = [int(i) * body for i in picks]
    return windows_at(ids, starts, body, bos_id), starts


def windows_at(ids, starts: list[int], body: int, bos_id: int) -> torch.Tensor:
    """[len(starts), 1 + body] int64: BOS, then ``ids[s : s + body]`` for each start ``s``."""
    tokens = torch.full((len(starts), 1 + body), bos_id, dtype=torch.long)
    for row, s in zip(tokens, starts):
        row[1:] = torch.from_numpy(np.asarray(ids[s : s + body], dtype=np.int64))
    return tokens


@dataclass(frozen=True)
class WordBoundaries:
    """Per vocabulary token: does its text begin with a letter or digit (``joins_left``: it
    continues a word the previous token left unfinished), does it end in one (``ends_alnum``)."""

    joins_left: torch.Tensor  # [d_vocab] bool
    ends_alnum: torch.Tensor  # [d_vocab] bool

    def whole_words(self, tokens: torch.Tensor) -> torch.Tensor:
        """[batch, pos] bool: the token at each position is a whole word there (module docstring).
        Position 0 and the last position count their outer side as a boundary."""
        joins = self.joins_left.to(tokens.device)[tokens]
        ends = self.ends_alnum.to(tokens.device)[tokens]
        glued = joins[:, 1:] & ends[:, :-1]  # [batch, pos - 1]: token p + 1 continues token p's word
        whole = torch.ones_like(joins)
        whole[:, 1:] &= ~glued  # starts a word
        whole[:, :-1] &= ~glued  # the word ends here
        return whole


_BOUNDARIES: dict[tuple, WordBoundaries] = {}


def word_boundaries(tokenizer, d_vocab: int) -> WordBoundaries:
    """:class:`WordBoundaries` of ``tokenizer``'s vocabulary, padded to ``d_vocab`` (ids the
    tokenizer does not have join nothing); computed once per process and vocabulary."""
    key = (getattr(tokenizer, "name_or_path", ""), len(tokenizer), d_vocab)
    if key not in _BOUNDARIES:
        texts = tokenizer.batch_decode([[i] for i in range(min(len(tokenizer), d_vocab))])
        joins = torch.zeros(d_vocab, dtype=torch.bool)
        ends = torch.zeros(d_vocab, dtype=torch.bool)
        joins[: len(texts)] = torch.tensor([t[:1].isalnum() for t in texts])
        ends[: len(texts)] = torch.tensor([t[-1:].isalnum() for t in texts])
        _BOUNDARIES[key] = WordBoundaries(joins, ends)
    return _BOUNDARIES[key]
