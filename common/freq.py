"""Token-frequency tables written by token_freq.py, and the "N most frequent tokens" every
vocabulary-subset analysis (clustering.py, cosine_attention_analysis.py) starts from.

Table format (``token_freq.csv``): columns ``token`` (the decoded GPT-2 token, leading space
kept), ``id`` (GPT-2 token id) and ``count`` (occurrences in the corpus), sorted by count
descending, ties by id ascending. Tokens that never occur are not listed.

Where a table is looked for: an explicit ``path``, else token_freq.py's default output for the
model, ``default_out_dir("token_freq", model)/token_freq.csv`` (figures/token_freq/ for gpt2-small,
figures/demo/token_freq/ for the planted model). The tokenizer is GPT-2's in every case, so a
table made for one model is valid for any other; when the model's own table is missing, the
gpt2-small table is used if it exists.

Fallback without any table (documented, deterministic, never silent: :func:`resolve_top_tokens`
says which source was used): every category word of :data:`common.prompts.CATEGORIES` first (in
list order), then the remaining ids in increasing order. Lower GPT-2 ids are earlier BPE merges,
which roughly tracks frequency in GPT-2's training data, so this is a crude but stable stand-in
for a frequency ranking. BOS/``<|endoftext|>`` (50256) is never included, from the table or the
fallback: it is a control token, not text.
"""

from __future__ import annotations

import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Callable, Iterable, Iterator, Union

import numpy as np
import pandas as pd

from common.outputs import default_out_dir

TABLE_NAME = "token_freq.csv"
COLUMNS = ("token", "id", "count")
EOT_ID = 50256  # GPT-2's <|endoftext|>, used as BOS


def default_table_path(model_name: str = "gpt2-small") -> Path:
    """Where token_freq.py writes its table for ``model_name`` by default."""
    return default_out_dir("token_freq", model_name) / TABLE_NAME


def load_freq_table(path: str | Path) -> pd.DataFrame:
    """Read and validate a token_freq.csv (or the folder holding one); sorted by count desc, id asc.

    Raises SystemExit with a clear message for a missing or malformed file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / TABLE_NAME
    if not path.exists():
        raise SystemExit(f"error: frequency table {path} not found (run token_freq.py first, or omit the option)")
    try:
        df = pd.read_csv(path, keep_default_na=False, dtype={"token": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise SystemExit(f"error: cannot read frequency table {path}: {exc}") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise SystemExit(f"error: {path} lacks column(s) {missing}; expected {list(COLUMNS)}")
    try:
        df["id"] = df["id"].astype("int64")
        df["count"] = df["count"].astype("int64")
    except (ValueError, TypeError) as exc:
        raise SystemExit(f"error: {path}: id/count must be integers ({exc})") from None
    df = df.sort_values(["count", "id"], ascending=[False, True], kind="stable").reset_index(drop=True)
    return df[list(COLUMNS)]


def _find_table(model_name: str, path: str | Path | None) -> Path | None:
    if path is not None:
        return Path(path)
    for candidate in (default_table_path(model_name), default_table_path("gpt2-small")):
        if candidate.exists():
            return candidate
    return None


def fallback_order(vocab_size: int = 50257) -> list[int]:
    """Category words first, then every other id ascending; BOS excluded. See the module docstring."""
    from common.gpt2_tokenizer import load_tokenizer
    from common.prompts import category_token_ids

    tok = load_tokenizer()
    first = [t for ids in category_token_ids(tok).values() for t in ids if t < vocab_size]
    seen = set(first) | {EOT_ID}
    return first + [t for t in range(vocab_size) if t not in seen]


def resolve_top_tokens(
    model_name: str, n: int, path: str | Path | None = None, vocab_size: int = 50257
) -> tuple[list[int], str]:
    """(ids, source): the ``n`` most frequent token ids and a one-line description of their source.

    With a table holding fewer than ``n`` usable ids, the rest is filled from :func:`fallback_order`
    (and the source says so). ``n`` larger than the vocabulary returns the whole vocabulary minus BOS.
    """
    if n < 1:
        raise ValueError("n must be positive")
    table = _find_table(model_name, path)
    ids: list[int] = []
    source = "fallback (no frequency table: category words, then ids ascending)"
    if table is not None:
        df = load_freq_table(table)
        keep = df["id"][(df["id"] != EOT_ID) & (df["id"] >= 0) & (df["id"] < vocab_size)]
        ids = keep.iloc[:n].tolist()
        source = f"frequency table {table}"
        if len(ids) < n:
            source += f" ({len(ids)} ids) + fallback order for the remaining {n - len(ids)}"
    if len(ids) < n:
        have = set(ids)
        ids += [t for t in fallback_order(vocab_size) if t not in have][: n - len(ids)]
    return ids, source


def top_tokens(model_name: str, n: int, path: str | Path | None = None, vocab_size: int = 50257) -> list[int]:
    """The ``n`` most frequent token ids (most frequent first); see :func:`resolve_top_tokens`."""
    return resolve_top_tokens(model_name, n, path, vocab_size)[0]


# ---------------------------------------------------------------------------------------------
# Counting (token_freq.py). The unit of tokenisation is one line *with* its trailing newline, as
# in the original's line-by-line loop, so results do not depend on batching or worker count
# ("\n\n" therefore counts as two "\n" tokens, never as the merged token 628).

Batch = Union[bytes, list]  # a blob of whole UTF-8 lines from a file, or a list of str lines
_TOKENIZER = None


def text_files(path: str | Path, pattern: str = "*.txt") -> list[Path]:
    """``path`` itself if it is a file, else every file under it matching ``pattern`` (sorted)."""
    path = Path(path).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob(pattern) if p.is_file())
        if not files:
            raise SystemExit(f"error: no files matching {pattern!r} under {path} (change --glob?)")
        return files
    raise SystemExit(f"error: --text {path}: no such file or folder")


def file_batches(files: Iterable[Path], batch_bytes: int = 1 << 20) -> Iterator[bytes]:
    """Blobs of about ``batch_bytes`` bytes, always ending at a line end (never mid-line)."""
    for f in files:
        with open(f, "rb") as fh:
            while True:
                blob = fh.read(batch_bytes)
                if not blob:
                    break
                if not blob.endswith(b"\n"):
                    blob += fh.readline()
                yield blob


def string_batches(lines: Iterable[str], batch_chars: int = 1 << 20) -> Iterator[list[str]]:
    """Lists of lines with about ``batch_chars`` characters each."""
    batch, size = [], 0
    for line in lines:
        batch.append(line)
        size += len(line)
        if size >= batch_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def split_lines(text: str) -> list[str]:
    """Lines ending in "\n" (kept; the last may lack it); "\r\n" is read as "\n".

    Only "\n" splits (not str.splitlines' many separators), as a text-mode file read does.
    """
    parts = text.replace("\r\n", "\n").split("\n")
    lines = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def batch_size_of(batch: Batch) -> int:
    return len(batch) if isinstance(batch, bytes) else sum(len(s) for s in batch)


def _tokenizer():
    global _TOKENIZER
    if _TOKENIZER is None:
        from common.gpt2_tokenizer import load_tokenizer

        _TOKENIZER = load_tokenizer().backend_tokenizer
    return _TOKENIZER


def count_batch(batch: Batch) -> tuple[np.ndarray, np.ndarray]:
    """(ids, counts) of one batch, sparse so that results are cheap to send between processes."""
    lines = split_lines(batch.decode("utf-8", errors="replace")) if isinstance(batch, bytes) else list(batch)
    if not lines:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    enc = _tokenizer().encode_batch_fast(lines, add_special_tokens=False)
    ids = np.fromiter((i for e in enc for i in e.ids), dtype=np.int64)
    return np.unique(ids, return_counts=True)


def _init_worker() -> None:
    # One single-threaded tokenizer per process: parallelism comes from the processes, and
    # Rust threads inside each would oversubscribe the cores.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _tokenizer()


def count_tokens(
    batches: Iterable[Batch],
    workers: int = 1,
    vocab_size: int = 50257,
    on_batch: Callable[[int], None] | None = None,
    tokenizer=None,
) -> np.ndarray:
    """Token counts [vocab_size] (int64) over all batches, using ``workers`` processes.

    Memory stays bounded: at most ``2 * workers`` batches are in flight, whatever the corpus
    size. ``on_batch(size)`` is called after each batch (for a progress bar). The result is
    identical for any ``workers`` (counts are sums). ``tokenizer`` (a transformers GPT-2
    tokenizer) saves re-loading the vendored one.
    """
    global _TOKENIZER
    if tokenizer is not None:
        _TOKENIZER = tokenizer.backend_tokenizer
    counts = np.zeros(vocab_size, dtype=np.int64)

    def add(result, size):
        ids, c = result
        if len(ids) and ids.max() >= vocab_size:
            raise ValueError(f"token id {int(ids.max())} >= vocabulary size {vocab_size}")
        np.add.at(counts, ids, c)
        if on_batch:
            on_batch(size)

    if workers <= 1:
        _init_worker()
        for b in batches:
            add(count_batch(b), batch_size_of(b))
        return counts
    _tokenizer()  # loaded before the fork, so forked workers inherit it instead of re-reading files
    with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker) as pool:
        pending: dict = {}
        for b in batches:
            if len(pending) >= 2 * workers:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    add(fut.result(), pending.pop(fut))
            pending[pool.submit(count_batch, b)] = batch_size_of(b)
        for fut in list(pending):
            add(fut.result(), pending.pop(fut))
    return counts


def counts_to_table(counts: np.ndarray, tokenizer=None) -> pd.DataFrame:
    """token,id,count for every id with count > 0, sorted by count desc then id asc."""
    if tokenizer is None:
        from common.gpt2_tokenizer import load_tokenizer

        tokenizer = load_tokenizer()
    ids = np.flatnonzero(counts)
    order = np.lexsort((ids, -counts[ids]))
    ids = ids[order]
    tokens = tokenizer.backend_tokenizer.decode_batch([[int(i)] for i in ids], skip_special_tokens=False)
    return pd.DataFrame({"token": tokens, "id": ids.astype(np.int64), "count": counts[ids].astype(np.int64)})
