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

**Cache**: the ids of ``--text PATH`` are cached on disk and memory-mapped back by
:mod:`common.text_ids_cache` (whose :func:`~common.text_ids_cache.script_text_ids` is what scripts
call); this module streams them (:class:`FileIdStream`) and names the code they depend on
(:func:`ids_code_digest`).

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
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.errors import error_summary

WIKITEXT = ("Salesforce/wikitext", "wikitext-103-raw-v1", "test")
DEMO = "demo"
CHUNK_CHARS = 100_000  # characters per encoded chunk (at least; whole lines)
HF_GROUP = 8  # chunks per Hugging Face tokenizer call (fallback route)
PIECE_CHARS = 1 << 22  # characters read from a file at a time


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


# ----------------------------------------------------------------------------------------------
# ids of files: streamed (cached by common.text_ids_cache)
# ----------------------------------------------------------------------------------------------


class FileIdStream:
    """The ids of ``files`` (the text of ``--text path``), chunk by chunk; at the end, raises
    :class:`TextUnavailable` if the text had nothing but whitespace."""

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

    def in_memory(self) -> np.ndarray:
        """All the ids as one array (uncached)."""
        parts = list(self)
        return np.concatenate(parts) if parts else np.zeros(0, ids_dtype(self.tokenizer))


_CODE = None


def ids_code_digest() -> str:
    """sha256 (16 hex) of the source of every function that decides the ids of a file."""
    global _CODE
    if _CODE is None:
        src = "".join(inspect.getsource(f) for f in (text_files, text_pieces, line_chunks, ids_dtype,
                                                       encode_chunks, FileIdStream))
        _CODE = hashlib.sha256((src + _LINE_END.pattern).encode()).hexdigest()[:16]
    return _CODE


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
